"""SFT throughput (samples/s and tokens/s) of our TRL SFT stage on the tiny model at the demo's settings.

Run:  nice -n 5 .venv/bin/python benchmarks/bench_sft_throughput.py [--steps 20] [--repeats 2] [--threads 1]

What runs is the project's own stage, :func:`deepperception.training.sft.train_sft` (TRL's
``SFTTrainer``, assistant-only loss, the pre-flight checks), with the ``demo`` profile's SFT
settings (batch 8, lr 2e-3, fp32 on CPU, the vision tower trained) for ``--steps`` optimizer steps,
on a tiny Qwen2-VL built with ``build_tiny_qwen2vl`` at the demo's base-model sizes.

The rows look like the demo's SFT rows: a 2-entity side-by-side composite of the synthetic domain
(96-px tiles, as the demo composes them) and the template teacher's full CoT for one of the two
entities (the demo's ~360-token reasoning), in the r1 prompt. Tokens are counted with the stage's
own pre-flight counter (text tokens of the chat template + the image tokens the processor expands
to); tokens/s counts every token the model reads (the loss covers the assistant part only).
The first step (lazy imports, allocator warm-up) is timed apart: ``steady`` is the runtime after it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def demo_like_rows(n: int, tile: int = 96, seed: int = 0):
    """``n`` SFT rows (question_id, messages JSON, images [PNG]) shaped like the demo's: two
    same-category entities side by side, the template teacher's full CoT for one of them."""
    import pyarrow as pa
    from PIL import Image

    from deepperception.domain.render import render_entity
    from deepperception.domain.synthetic import SyntheticDomainConfig, mine_entities
    from deepperception.engine.distillation import CotRequest, TemplateTeacher, sft_response
    from deepperception.prompts import grounding_messages, grounding_question

    entities = [e for e in mine_entities(SyntheticDomainConfig()) if e.split == "seen"]
    by_cat: dict[str, list] = {}
    for e in entities:
        by_cat.setdefault(e.category, []).append(e)
    cats = sorted(by_cat)
    teacher = TemplateTeacher(entities)
    rows = []
    for i in range(n):
        group = by_cat[cats[i % len(cats)]]
        pair = [group[(i // len(cats)) % len(group)], group[(i // len(cats) + 1) % len(group)]]
        canvas = Image.new("RGB", (2 * tile, tile))
        ents = []
        for j, e in enumerate(pair):
            img, (x1, y1, x2, y2) = render_entity(e, seed + 10 * i + j, tile)
            canvas.paste(img, (j * tile, 0))
            box = [round(1000 * (x1 + j * tile) / (2 * tile)), round(1000 * y1 / tile),
                   round(1000 * (x2 + j * tile) / (2 * tile)), round(1000 * y2 / tile)]
            ents.append({"entity_id": e.entity_id, "name": e.name, "box": box})
        t = i % 2
        buf = io.BytesIO()
        canvas.save(buf, format="PNG")
        question = grounding_question(pair[t].name)
        cot = teacher.generate(CotRequest(question_id=f"q{i}", composite_id=f"c{i}", category=pair[t].category,
                                          split="seen", image_png=buf.getvalue(), prompt=question, entities=ents,
                                          target_index=t))
        msgs = grounding_messages(question, "r1")
        msgs.append({"role": "assistant", "content": [{"type": "text",
                                                       "text": sft_response(cot, pair[t].name, ents[t]["box"])}]})
        rows.append({"question_id": f"bench/{i:04d}", "messages": json.dumps(msgs), "images": [buf.getvalue()]})
    return pa.Table.from_pylist(rows, schema=pa.schema([("question_id", pa.string()), ("messages", pa.string()),
                                                         ("images", pa.list_(pa.binary()))]))


def row_tokens(rows, ckpt: Path) -> list[int]:
    """Text + image tokens of every row, by the SFT stage's own pre-flight counter."""
    from deepperception.model.loading import load_processor
    from deepperception.training.preflight import token_counts
    from deepperception.training.sft import _dataset

    _, _, messages, images = _dataset(rows)
    return [a + b for a, b in token_counts(load_processor(ckpt), messages, images)]


def step_clock():
    """A ``TrainerCallback`` that records when step 1 and the last step end (between them: the
    steady state)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        first_end: float | None = None
        last_end: float | None = None

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            if state.global_step == 1:
                self.first_end = now
            self.last_end = now

    return StepClock()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    ap.add_argument("--repeats", type=int, default=2, help="runs; median reported")
    ap.add_argument("--profile", default="demo", help="profile whose base-model sizes and SFT settings are used")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared, loaded machine)")
    a = ap.parse_args(argv)
    if a.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is the warm-up)")

    import torch

    from deepperception.config import load_profile
    from deepperception.model.synthetic import tiny_corpus
    from deepperception.model.tiny import build_tiny_qwen2vl
    from deepperception.training import sft

    torch.set_num_threads(a.threads)
    prof = load_profile(a.profile)
    b = prof.base_model
    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    cfg = prof.sft.model_copy(update={"max_steps": a.steps, "save_steps": 10**6, "logging_steps": max(1, a.steps)})
    samples_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    pool = demo_like_rows(max(384, samples_per_step * a.steps))  # 384: the demo's SFT rows
    rows = pool.slice(0, samples_per_step * a.steps)
    # The base-model stage trains the tokenizer on the run's own texts (tasks.training._tokenizer_corpus).
    corpus = [p["text"] for m in pool.column("messages").to_pylist() for msg in json.loads(m)
              for p in msg["content"] if isinstance(p, dict) and p.get("type") == "text"]
    ckpt = build_tiny_qwen2vl(tmp / "tiny", tiny_corpus() + corpus, vocab_size=b.vocab_size, hidden=b.hidden,
                              layers=b.layers, image_min_pixels=b.image_min_pixels,
                              image_max_pixels=b.image_max_pixels, seed=b.seed)
    tokens = row_tokens(rows, ckpt)

    clock = step_clock()
    real_trainer = sft._image_counting_trainer

    def with_clock():  # the stage's trainer class, plus the step clock
        cls = real_trainer()

        class Clocked(cls):
            def __init__(self, *args, **kw):
                kw["callbacks"] = [*(kw.get("callbacks") or []), clock]
                super().__init__(*args, **kw)
        return Clocked

    sft._image_counting_trainer = with_clock
    runs = []
    try:
        for r in range(a.repeats):
            clock.first_end = clock.last_end = None
            res = sft.train_sft(rows, ckpt, tmp / f"out{r}", cfg, work_dir=tmp / f"work{r}")
            steady = clock.last_end - clock.first_end
            n = samples_per_step * (a.steps - 1)  # one epoch: every row once, in a seeded order
            runs.append({"runtime_s": res.metrics["runtime_s"], "steady_s": steady,
                         "samples_per_s": n / steady, "tokens_per_s": n * statistics.fmean(tokens) / steady,
                         "last_loss": res.metrics.get("train_loss_last")})
            print(f"[run {r}] {runs[-1]}", file=sys.stderr, flush=True)
    finally:
        sft._image_counting_trainer = real_trainer

    med = {k: statistics.median(x[k] for x in runs) for k in ("samples_per_s", "tokens_per_s", "steady_s")}
    cmd = "python benchmarks/bench_sft_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# SFT throughput, TRL SFTTrainer via train_sft ({platform.python_implementation()} "
          f"{platform.python_version()}, {platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs)")
    print(f"command: `{cmd.strip()}`")
    print(f"model: tiny Qwen2-VL ({a.profile} base model: hidden {b.hidden}, layers {b.layers}, vocab {b.vocab_size}); "
          f"{a.profile} SFT settings: batch {cfg.per_device_train_batch_size} x accumulation "
          f"{cfg.gradient_accumulation_steps}, lr {cfg.learning_rate}, bf16 {cfg.bf16}, assistant-only loss "
          f"{cfg.assistant_only_loss}; {a.steps} steps x {a.repeats} runs, median of the steady state (after step 1)")
    print()
    print("| rows | tokens / row (mean, max) | steady s | samples / s | tokens / s | s / step |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(rows)} demo-like (2-entity composite, template CoT) | {statistics.fmean(tokens):.0f}, {max(tokens)} | "
          f"{med['steady_s']:.1f} | **{med['samples_per_s']:.2f}** | **{med['tokens_per_s']:.0f}** | "
          f"{med['steady_s'] / (a.steps - 1):.2f} |")


if __name__ == "__main__":
    main()
