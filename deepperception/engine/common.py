"""Helpers every engine stage shares: column checks, PNG codecs, box columns, JSON cells.

They exist so that every stage reports bad input the same way, an ``InputDataError`` naming the
stage, row and field, instead of a KeyError from pyarrow or an OSError from PIL.
"""

from __future__ import annotations

import io
import json
from typing import Any, Sequence

import pyarrow as pa
from PIL import Image

from deepperception.errors import InputDataError
from deepperception.images import decode_image  # noqa: F401  (re-exported for the engine)
from deepperception.tables import require_columns  # noqa: F401

BOX_INT = pa.list_(pa.int32(), 4)
BOX_FLOAT = pa.list_(pa.float32(), 4)
from deepperception.tables import IMAGE_STRUCT  # noqa: E402,F401


def encode_png(img: Image.Image) -> bytes:
    """RGB PNG bytes; deterministic for identical pixels. Low compression: CPU matters more than disk."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def parse_json_cell(value: Any, *, stage: str, row: int | str, field: str, artifact: str | None = None) -> Any:
    """``json.loads`` a string cell, naming row and field on failure."""
    if not isinstance(value, str):
        raise InputDataError(f"expected a JSON string, got {type(value).__name__}", stage=stage, artifact=artifact, row=row, field=field)
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise InputDataError(f"invalid JSON ({exc})", stage=stage, artifact=artifact, row=row, field=field) from None


def check_box(box: Any, *, stage: str, row: int | str, field: str = "box", artifact: str | None = None) -> tuple[int, int, int, int]:
    """A valid 0-1000 box ``x1 < x2, y1 < y2`` as ints, or an error naming row and field.

    >>> check_box([1, 2, 30, 40], stage="s", row=0)
    (1, 2, 30, 40)
    >>> check_box([30, 2, 1, 40], stage="s", row=5)
    Traceback (most recent call last):
    ...
    deepperception.errors.InputDataError: [stage=s row=5 field=box] box [30, 2, 1, 40] is not x1<x2, y1<y2 within 0..1000
    """
    try:
        x1, y1, x2, y2 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise InputDataError(f"box {box!r} is not four integers", stage=stage, artifact=artifact, row=row, field=field) from None
    if not (0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000):
        raise InputDataError(f"box {list(box)} is not x1<x2, y1<y2 within 0..1000", stage=stage, artifact=artifact, row=row, field=field)
    return x1, y1, x2, y2


class ItemFailed(Exception):
    """A per-item failure a stage records in its output (HTTP error after retries, unparsable
    reply, empty CoT...) instead of failing the whole batch; bad *input* raises InputDataError."""


def map_bounded(fn, items: Sequence[Any], concurrency: int) -> list[Any]:
    """``[fn(x) for x in items]`` in order, on at most ``concurrency`` threads (HTTP backends
    are I/O bound; ``concurrency=1`` runs inline, which keeps tracebacks simple).

    >>> map_bounded(lambda x: x * 2, [1, 2, 3], concurrency=2)
    [2, 4, 6]
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if concurrency == 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        return list(pool.map(fn, items))


def choose_targets(composite_id: str, n_entities: int, n: int, seed: int, purpose: str) -> list[int]:
    """Which entities of a composite get a question: ``min(n, n_entities)`` distinct indices,
    sorted, fixed by ``(purpose, seed, composite_id)`` so SFT, GRPO and bench choices are
    independent of each other but reproducible.

    >>> choose_targets("fish-train-0001", 4, 2, 0, "sft") == choose_targets("fish-train-0001", 4, 2, 0, "sft")
    True
    >>> choose_targets("c", 3, 5, 0, "bench")
    [0, 1, 2]
    """
    from deepperception.domain.seeding import rng_for

    if n < 1:
        raise ValueError(f"need at least one target per composite, got {n}")
    return sorted(rng_for("targets", purpose, seed, composite_id).sample(range(n_entities), min(n, n_entities)))


def composite_entities(value: Any, *, stage: str, row: int | str) -> list[dict]:
    """Parse and validate a composite's ``entities`` JSON cell: ``[{entity_id, name, box}, ...]``."""
    items = parse_json_cell(value, stage=stage, row=row, field="entities")
    if not isinstance(items, list) or not items:
        raise InputDataError("entities must be a non-empty JSON list", stage=stage, row=row, field="entities")
    for j, item in enumerate(items):
        if not isinstance(item, dict) or not {"entity_id", "name", "box"} <= set(item):
            raise InputDataError(f"entities[{j}] must have entity_id, name and box; got {item!r}", stage=stage, row=row, field="entities")
        item["box"] = list(check_box(item["box"], stage=stage, row=row, field=f"entities[{j}].box"))
    return items


# Items a stage could not use at all (a missing or corrupt photo, an entity with too few photos, a
# CoT the validator refused): never silently dropped, always a row here with a reason code.
REJECTED_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string()),
])


def rejected_table(rows: list[dict]) -> pa.Table:
    """Rows ``{item_id, stage, reason, detail}`` as a ``REJECTED_SCHEMA`` table (empty allowed).

    >>> rejected_table([{"item_id": "a", "stage": "label", "reason": "missing_file", "detail": None}]).num_rows
    1
    """
    return pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA) if rows else REJECTED_SCHEMA.empty_table()


def merge_counts(a: Any, b: Any) -> Any:
    """Sum two per-shard statistics: numbers add, dicts merge key by key, equal-length lists add
    element-wise, anything else keeps the first non-null value.

    >>> merge_counts({"n": 1, "h": [1, 0], "by": {"x": 2}, "model": "m"}, {"n": 2, "h": [0, 3], "by": {"y": 1}, "model": "m"})
    {'n': 3, 'h': [1, 3], 'by': {'x': 2, 'y': 1}, 'model': 'm'}
    """
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, bool) or isinstance(b, bool):
        return a
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: merge_counts(a.get(k), b.get(k)) for k in {**a, **b}}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
            isinstance(x, (int, float)) for x in a + b):
        return [x + y for x, y in zip(a, b)]
    return a
