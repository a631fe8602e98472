"""Small synthetic KVG-style data for tests, benchmarks and the tiny-model demo.

Why: the tiny model's tokenizer needs a domain corpus, and inference/training tests need rows in
the exact KVG-Bench / SFT / GRPO schemas with images of *mixed sizes* (to exercise padding),
without depending on the data engine.
"""

from __future__ import annotations

import io
import json

import numpy as np

from deepperception.boxes import grounding_answer
from deepperception.prompts import grounding_messages, grounding_question

ENTITIES = ["Boeing 747", "Airbus A380", "Sukhoi Su-30", "Lockheed C-130 Hercules", "Douglas DC-6",
            "Ilyushin Il-76", "Embraer EMB 120 Brasilia", "Cessna 172"]
CATEGORIES = ["aircraft", "car", "bird", "food", "dog"]
SIZES = [(56, 56), (112, 84), (100, 140), (60, 200), (112, 112), (80, 80), (90, 120), (70, 150)]


def _png(rng: np.random.Generator, h: int, w: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _box(i: int) -> tuple[int, int, int, int]:
    x1, y1 = (37 * i) % 500, (53 * i) % 500
    return (x1, y1, x1 + 100 + (11 * i) % 400, y1 + 120 + (7 * i) % 380)


def cot_text(entity: str, box: tuple[int, int, int, int]) -> str:
    """A short CoT answer in the DeepPerception format."""
    from deepperception.boxes import format_box
    return (f"<think>The image shows several aircraft. Comparing their shapes, the {entity} is the one at "
            f"{format_box(box)}.</think><answer>{grounding_answer(entity, box)}</answer>")


def tiny_corpus() -> list[str]:
    """Tokenizer corpus: questions, CoT answers and boxes over the synthetic entities."""
    out = []
    for i, e in enumerate(ENTITIES * 6):
        out.append(grounding_question(e))
        out.append(cot_text(e, _box(i)))
    return out


def synthetic_bench(n: int = 16, seed: int = 0):
    """A KVG-Bench-schema ``pyarrow.Table``: question_id, question, image struct{bytes,path}, answer, category."""
    import pyarrow as pa
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        e = ENTITIES[i % len(ENTITIES)]
        cat = CATEGORIES[i % len(CATEGORIES)]
        h, w = SIZES[i % len(SIZES)]
        rows.append({"question_id": f"{cat}/{i:04d}", "question": grounding_question(e),
                     "image": {"bytes": _png(rng, h, w), "path": f"{i:04d}.png"},
                     "answer": grounding_answer(e, _box(i)), "category": cat})
    return pa.Table.from_pylist(rows)


def synthetic_grpo_rows(n: int = 4, seed: int = 1):
    """GRPO-schema table: question_id, image struct{bytes,path}, problem, solution (official style)."""
    import pyarrow as pa
    b = synthetic_bench(n, seed).to_pylist()
    return pa.Table.from_pylist([{"question_id": r["question_id"], "image": r["image"], "problem": r["question"],
                                  "solution": f"<answer> {r['answer']} </answer>"} for r in b])  # grpo_solution's form


def synthetic_sft_rows(n: int = 8, seed: int = 2):
    """SFT-schema table: question_id, messages (JSON), images (list<binary> PNG)."""
    import pyarrow as pa
    rows = []
    for i, r in enumerate(synthetic_bench(n, seed).to_pylist()):
        e = ENTITIES[i % len(ENTITIES)]
        msgs = grounding_messages(r["question"], "r1")
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": cot_text(e, _box(i))}]})
        rows.append({"question_id": r["question_id"], "messages": json.dumps(msgs), "images": [r["image"]["bytes"]]})
    return pa.Table.from_pylist(rows, schema=pa.schema([("question_id", pa.string()), ("messages", pa.string()),
                                                         ("images", pa.list_(pa.binary()))]))


def cached_tiny_checkpoint(base_dir, name: str = "tiny-qwen2vl", seed: int = 0):
    """Build the tiny checkpoint for :func:`tiny_corpus` under ``base_dir/name`` once and reuse it
    (test sessions share one build across test directories)."""
    from pathlib import Path

    from deepperception.model.tiny import build_tiny_qwen2vl
    d = Path(base_dir) / name
    if not (d / "model.safetensors").is_file():
        build_tiny_qwen2vl(d, tiny_corpus(), seed=seed)
    return d
