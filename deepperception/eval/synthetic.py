"""Synthetic KVG-Bench tables and adversarial model outputs, for parity tests and benchmarks.

The real KVG-Bench is not available offline, so scorer parity is checked on a bench with the
official shape (10 categories, the per-category sizes that reproduce the paper's Table 1,
official schema) and on generated outputs that walk every branch of the official parser: each of
the 8 regexes, the float-cast failure, the x1000 rescale, boxes only in ``<think>``, multi-line
answers, NaN/inf/huge numbers, inverted and zero-area boxes. Everything is seeded.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping

import numpy as np
import pyarrow as pa

from deepperception.prompts import grounding_question
from deepperception.boxes import grounding_answer
from deepperception.eval.groups import DEFAULT_ALL

# official-code.md §3: per-category sizes (sum 1,336), in DEFAULT_ALL order.
OFFICIAL_CATEGORY_SIZES: dict[str, int] = dict(
    zip(DEFAULT_ALL, (152, 104, 145, 251, 140, 125, 135, 112, 89, 83))
)

from deepperception.tables import BENCH_SCHEMA  # noqa: E402


def _tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (128, 64, 32)).save(buf, format="PNG")
    return buf.getvalue()


def make_bench(
    sizes: Mapping[str, int] = OFFICIAL_CATEGORY_SIZES, seed: int = 0, shuffle: bool = True
) -> pa.Table:
    """A bench table in the official schema with random valid GT boxes (0-1000 integers).

    >>> t = make_bench({"car": 2, "dog": 1})
    >>> t.num_rows, t.schema.field("image").type
    (3, StructType(struct<bytes: binary, path: string>))
    """
    rng = np.random.default_rng(seed)
    png = _tiny_png()
    rows: list[dict] = []
    for cat, n in sizes.items():
        for i in range(n):
            x1, y1 = (int(v) for v in rng.integers(0, 900, 2))
            x2 = int(rng.integers(x1 + 1, min(1000, x1 + 600) + 1))
            y2 = int(rng.integers(y1 + 1, min(1000, y1 + 600) + 1))
            entity = f"{cat.title()} entity {i % 37}"
            rows.append({
                "question_id": f"{cat}/{i:05d}",
                "question": grounding_question(entity),
                "image": {"bytes": png, "path": f"{cat}/{i:05d}.png"},
                "answer": grounding_answer(entity, (x1, y1, x2, y2)),
                "category": cat,
            })
    if shuffle:
        rows = [rows[i] for i in rng.permutation(len(rows))]
    return pa.Table.from_pylist(rows, schema=BENCH_SCHEMA)


def _near(rng: np.random.Generator, gt: tuple[int, int, int, int]) -> list[int]:
    """A box around the GT: sometimes exact, often jittered, sometimes anywhere / inverted."""
    r = rng.random()
    if r < 0.15:
        return list(gt)
    if r < 0.75:
        s = int(rng.integers(1, 150))
        return [int(v + rng.integers(-s, s + 1)) for v in gt]
    if r < 0.9:
        x1, y1 = (int(v) for v in rng.integers(0, 1000, 2))
        return [x1, y1, int(rng.integers(0, 1001)), int(rng.integers(0, 1001))]
    return [gt[2], gt[3], gt[0], gt[1]]  # inverted


def _num(rng: np.random.Generator, v: int) -> str:
    r = rng.random()
    if r < 0.85:
        return str(v)
    if r < 0.9:
        return f"{v}.5"
    if r < 0.93:
        return str(-abs(v))
    return str(rng.choice(["nan", "inf", "1" + "0" * 40, "1e39", "x1", "", " 7", "1_0"]))


def _fragments(rng: np.random.Generator, gt: tuple[int, int, int, int]) -> list[Callable[[], str]]:
    def b() -> list[int]:
        return _near(rng, gt)

    def n(v: int) -> str:
        return _num(rng, v)

    def f1() -> str:
        a = b()
        return f"<answer><|object_ref_start|>E<|object_ref_end|>({n(a[0])},{n(a[1])}),({n(a[2])},{n(a[3])})</answer>"

    def f1_space() -> str:
        a = b()
        return f"<answer> E({a[0]},{a[1]}),({a[2]},{a[3]}) </answer>"

    def f1_newline() -> str:
        a = b()
        return f"<answer>\nE({a[0]},{a[1]}),({a[2]},{a[3]})\n</answer>"

    def f2() -> str:
        a = b()
        return f"So the answer is {rng.choice(['E', 'box', ''])} ({n(a[0])},{n(a[1])}),({n(a[2])},{n(a[3])})."

    def f3() -> str:
        a = b()
        return f"E({n(a[0])},{n(a[1])}),({n(a[2])},{n(a[3])}) is the one"

    def f3_junk() -> str:
        a = b()
        return f"({a[0]},{a[1]}.{rng.integers(0, 10)}),({a[2]},{a[3]})"

    def f4() -> str:
        a = b()
        sep = rng.choice([" to ", " - ", " and then ", "\n"])
        return f"({n(a[0])}, {n(a[1])}){sep}({n(a[2])}, {n(a[3])})"

    def f4_norm() -> str:
        a = [round(v / 1000, 2) for v in b()]
        return f"from ({a[0]}, {a[1]}) to ({a[2]}, {a[3]})"

    def f4_words() -> str:
        return "(x1, y1) to (x2, y2)"

    def f5() -> str:
        a = b()
        return f"[{n(a[0])}, {n(a[1])}, {n(a[2])}, {n(a[3])}]"

    def f6() -> str:
        a = [round(v / 1000, 3) for v in b()]
        return f"[{a[0]}, {a[1]}, {a[2]}, {a[3]}]"

    def f7() -> str:
        a = b()
        return f"({n(a[0])}, {n(a[1])}, {n(a[2])}, {n(a[3])})"

    def f8() -> str:
        a = b()
        return f"- Top-left corner: ({a[0]}, {a[1]})\n- Bottom-right corner: ({a[2]}, {a[3]})"

    def f0() -> str:
        a = b()
        return str(rng.choice([f"({a[0]},{a[1]},{a[2]},{a[3]})", "31700", "the second aircraft", ""]))

    return [f1, f1, f1, f1_space, f1_newline, f2, f3, f3, f3_junk, f4, f4_norm, f4_words, f5, f6, f7, f8, f0, f0]


def random_output(rng: np.random.Generator, gt: tuple[int, int, int, int]) -> str:
    """One synthetic decoded output: think text with 0-2 fragments, then an answer."""
    frags = _fragments(rng, gt)
    think = " ".join(frags[int(rng.integers(len(frags)))]() for _ in range(int(rng.integers(0, 3))))
    final = frags[int(rng.integers(len(frags)))]()
    r = rng.random()
    if r < 0.5:
        if final.startswith("<answer>"):
            return f"<think>Comparing the objects. {think}</think>\n{final}"
        return f"<think>Comparing the objects. {think}</think>\n<answer>{final}</answer>"
    if r < 0.8:
        return f"{think} {final}"
    return f"<think>{think}</think> <answer> {final} </answer> trailing (1,2"


def make_outputs(bench: pa.Table, seed: int = 0, missing_fraction: float = 0.0) -> dict[str, str]:
    """Random outputs for every question (a ``missing_fraction`` of them left out)."""
    from deepperception.boxes import parse_gt_box

    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for qid, ans in zip(bench.column("question_id").to_pylist(), bench.column("answer").to_pylist()):
        if rng.random() < missing_fraction:
            continue
        gt = parse_gt_box(ans)
        assert gt is not None
        out[qid] = random_output(rng, tuple(int(v) for v in gt))  # type: ignore[arg-type]
    return out
