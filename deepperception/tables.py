"""Checks on input tables shared by every stage."""

from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa

from deepperception.errors import InputDataError

# How images are stored in bench/GRPO tables: the HF-datasets struct the official code indexes
# as ``image["bytes"]`` (not an HF ``Image`` feature).
IMAGE_STRUCT = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])

# The official KVG-Bench parquet schema (official-code.md §3).
BENCH_SCHEMA = pa.schema([
    pa.field("question_id", pa.string()),
    pa.field("question", pa.string()),
    pa.field("image", IMAGE_STRUCT),
    pa.field("answer", pa.string()),
    pa.field("category", pa.string()),
])


def require_columns(
    table: Any, columns: Sequence[str], *, stage: str, artifact: str | None = None, allow_empty: bool = True
) -> None:
    """Raise ``InputDataError`` naming the first missing column (and listing what is there).
    ``table`` is a pyarrow table or a pandas DataFrame.

    >>> require_columns(pa.table({"a": [1]}), ["a"], stage="s")
    >>> require_columns(pa.table({"a": [1]}), ["a", "b"], stage="s")
    Traceback (most recent call last):
    ...
    deepperception.errors.InputDataError: [stage=s field=b] missing column(s) ['b']; table has ['a']
    """
    names = list(table.column_names) if hasattr(table, "column_names") else list(table.columns)
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputDataError(
            f"missing column(s) {missing}; table has {names}", stage=stage, artifact=artifact, field=missing[0]
        )
    if not allow_empty and len(table) == 0:
        raise InputDataError("table has no rows", stage=stage, artifact=artifact)
