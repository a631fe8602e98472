"""Files in and out of scoring.

Inputs
    * bench: a KVG-Bench parquet in the official schema (``question_id``, ``question``,
      ``image: struct<bytes, path>``, ``answer``, ``category``). Scoring reads only the three
      columns it needs, so image bytes are never loaded.
    * outputs: ``OUTPUTS.jsonl``, one ``{"question_id": str, "answer": str}`` object per line
      (``answer`` = the raw decoded text; ``output`` is accepted instead, which is what
      ``eval.inference`` writes; other keys such as ``cot`` are ignored). Blank lines are
      skipped; bad JSON, bytes that are not UTF-8, missing/non-string keys and repeated ids raise
      an error naming the file and the line (nothing is dropped or replaced silently).

Output directory of one scoring run (``write_report``)
    * ``metrics.json``: the official metrics dict, written exactly like ``evaluate.py``
      (``json.dump`` without indent), so it can be diffed byte for byte against an official run.
    * ``predictions.parquet``: one row per question (see ``scoring.PREDICTION_COLUMNS``).
    * ``strict.json``: strict-scoring summary per group.
    * ``cis.json``: 95% bootstrap CIs of official and strict accuracy per group.
    * ``report.json``: run facts: counts, missing ids, category lists, match-pattern counts
      per group (``[unmatched, #1, ..., #8]``, what the official scorer prints).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from deepperception.fileio import atomic_write, atomic_write_parquet
from deepperception.errors import InputDataError
from deepperception.eval.scoring import BENCH_COLUMNS, ScoreResult

BENCH_SCHEMA_COLUMNS = ("question_id", "question", "image", "answer", "category")
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
STRICT_FILE = "strict.json"
CIS_FILE = "cis.json"
REPORT_FILE = "report.json"
TEXT_KEYS = ("answer", "output")


def read_bench(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """Read a bench parquet, checking the official schema for the columns read.

    ``columns=None`` reads the full schema (all five columns must exist); pass
    ``list(scoring.BENCH_COLUMNS)`` to read only what scoring needs.
    """
    p = str(path)
    try:
        schema = pq.read_schema(p)
    except (OSError, pa.ArrowException) as e:
        raise InputDataError(f"cannot read bench parquet: {e}", stage="eval.read_bench", artifact=p) from e
    wanted = list(BENCH_SCHEMA_COLUMNS) if columns is None else list(columns)
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise InputDataError(f"bench lacks column(s) {missing}; has {schema.names}", stage="eval.read_bench",
                             artifact=p, field=missing[0])
    if "image" in wanted:
        t = schema.field("image").type
        if not (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0):
            raise InputDataError(f"image must be struct<bytes: binary, path: string> (indexed as ['bytes']), got {t}",
                                 stage="eval.read_bench", artifact=p, field="image")
    return pq.read_table(p, columns=wanted)


def read_bench_for_scoring(path: str | os.PathLike[str]) -> pa.Table:
    """Only the scoring columns (question_id, category, answer)."""
    return read_bench(path, columns=list(BENCH_COLUMNS))


def read_outputs(path: str | os.PathLike[str], text_key: str | None = None) -> dict[str, str]:
    """``OUTPUTS.jsonl`` -> ``{question_id: decoded text}``; errors name the 1-based line number.

    The text is read from ``answer`` (the official temp-file key) or ``output`` (the key
    :mod:`deepperception.eval.inference` writes); a line with both is refused unless ``text_key``
    names one.
    """
    p = str(path)
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    try:
        # Binary, decoded line by line: a text-mode file raises UnicodeDecodeError from inside the
        # iterator, with neither the file nor the line. Splitting on b"\n" is safe for UTF-8.
        fh = open(p, "rb")
    except OSError as e:
        raise InputDataError(f"cannot open outputs: {e}", stage="eval.read_outputs", artifact=p) from e
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputDataError(
                    f"line {lineno}: not valid UTF-8 at byte {e.start + 1} of the line "
                    f"({raw[e.start:e.start + 1]!r}: {e.reason}); re-encode the file as UTF-8",
                    stage="eval.read_outputs", artifact=p, row=lineno) from e
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 BOM is not part of the first record
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputDataError(f"line {lineno}: invalid JSON ({e.msg} at column {e.colno})",
                                     stage="eval.read_outputs", artifact=p, row=lineno) from e
            if not isinstance(rec, dict):
                raise InputDataError(f"line {lineno}: expected a JSON object, got {type(rec).__name__}",
                                     stage="eval.read_outputs", artifact=p, row=lineno)
            keys = [k for k in TEXT_KEYS if k in rec] if text_key is None else [text_key]
            if len(keys) > 1:
                raise InputDataError(f"line {lineno}: both {keys} present; pass text_key to choose",
                                     stage="eval.read_outputs", artifact=p, row=lineno, field=keys[0])
            key_text = keys[0] if keys else TEXT_KEYS[0]
            for key in ("question_id", key_text):
                if key not in rec:
                    alt = " (or 'output')" if key == "answer" and text_key is None else ""
                    raise InputDataError(f"line {lineno}: missing key {key!r}{alt}", stage="eval.read_outputs",
                                         artifact=p, row=lineno, field=key)
                if not isinstance(rec[key], str):
                    raise InputDataError(f"line {lineno}: {key!r} must be a string, got {type(rec[key]).__name__}",
                                         stage="eval.read_outputs", artifact=p, row=lineno, field=key)
            qid = rec["question_id"]
            if qid in out:
                raise InputDataError(f"line {lineno}: duplicate question_id {qid!r} (first on line {first_line[qid]})",
                                     stage="eval.read_outputs", artifact=p, row=lineno, field="question_id")
            out[qid] = rec[key_text]
            first_line[qid] = lineno
    return out


def write_outputs(path: str | os.PathLike[str], outputs: dict[str, str]) -> None:
    """Write ``OUTPUTS.jsonl`` (one object per line, UTF-8, non-ASCII kept)."""
    with open(path, "w", encoding="utf-8") as f:
        for qid, text in outputs.items():
            f.write(json.dumps({"question_id": qid, "answer": text}, ensure_ascii=False) + "\n")


def write_report(result: ScoreResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the run directory described in the module docstring; returns the file paths."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {name: d / name for name in (METRICS_FILE, PREDICTIONS_FILE, STRICT_FILE, CIS_FILE, REPORT_FILE)}
    # evaluate.py: `json.dump(all_metrics, f)`; json.dumps gives the identical string.
    atomic_write(paths[METRICS_FILE], json.dumps(result.metrics))
    atomic_write_parquet(paths[PREDICTIONS_FILE], result.predictions_table())  # NaN stays NaN, as in the official files
    atomic_write(paths[STRICT_FILE], json.dumps(result.strict, indent=2))
    atomic_write(paths[CIS_FILE], json.dumps(result.cis, indent=2))
    atomic_write(paths[REPORT_FILE], json.dumps(result.summary(), indent=2))
    return paths


@dataclass
class Run:
    """A scoring run read back from its directory."""

    path: Path
    metrics: dict[str, Any]
    predictions: pd.DataFrame

    @property
    def category_order(self) -> list[str]:
        """Categories in metrics.json key order (after all / seen / unseen)."""
        from deepperception.eval.groups import DOMAIN_GROUPS

        return [k for k in self.metrics if k not in DOMAIN_GROUPS]


def read_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read ``metrics.json`` and ``predictions.parquet`` of a scoring run directory."""
    d = Path(run_dir)
    for name in (METRICS_FILE, PREDICTIONS_FILE):
        if not (d / name).is_file():
            raise InputDataError(f"{d} is not a scoring run: {name} is missing", stage="eval.read_run", artifact=str(d))
    try:
        metrics = json.loads((d / METRICS_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputDataError(f"metrics.json is not valid UTF-8 JSON: {e}", stage="eval.read_run",
                             artifact=str(d / METRICS_FILE)) from e
    if not isinstance(metrics, dict):
        raise InputDataError(f"metrics.json must hold a JSON object, got {type(metrics).__name__}",
                             stage="eval.read_run", artifact=str(d / METRICS_FILE))
    try:
        predictions = pq.read_table(d / PREDICTIONS_FILE).to_pandas()
    except (OSError, pa.ArrowException) as e:
        raise InputDataError(f"cannot read predictions parquet: {e}", stage="eval.read_run",
                             artifact=str(d / PREDICTIONS_FILE)) from e
    return Run(path=d, metrics=metrics, predictions=predictions)
