"""KVG-Bench scoring with number-for-number parity to the official ``evaluate.py``.

What the official scorer does (thunlp/DeepPerception @ ae5e8a8, ``evaluate.py``) and what we do:

* ``calculate_ious``: per answer, ``get_bbox`` (:func:`~deepperception.eval.parsing.official_bbox`)
  then torchvision ``box_iou`` in float32 against each GT box; ``max_iou`` starts at the int 0 and
  takes ``iou.item()`` only if larger, so NaN/negative IoUs count 0. Correct iff ``max_iou >= 0.5``.
  We compute all IoUs at once with :func:`deepperception.boxes.box_iou_many` (same float32 ops).
* Metrics per group: ``Acc = correct / len(ious)`` and ``IoU = sum(ious) / len(ious)`` as plain
  Python floats: **fractions in [0, 1], not percentages, not rounded**; ``Num`` = group size.
  We sum the same Python floats in the same (bench row) order with the builtin ``sum`` so the
  result is bit-identical, not merely close.
* ``metrics.json`` = ``{"all": {"all": {...}}, "seen domain": {...}, "unseen domain": {...},
  <each of --all_categories in order>: {"all": {...}}}``; unseen = every row whose category is not
  in the seen list.
* Empty groups: the official code divides by ``len(ious) == 0`` and crashes, so it never writes
  metrics.json with an empty group. ``empty_groups="error"`` (default) refuses likewise, with a
  clear message; ``"omit"`` leaves such groups out.
* Missing outputs: the official evaluator re-runs inference for every question without a result
  file and then opens all of them, so a missing output would be a ``FileNotFoundError``.
  ``missing="official"`` scores it as the empty answer (pattern 0, IoU 0, wrong: the closest
  faithful outcome) and counts it in ``num_missing``; ``missing="error"`` refuses.
* Bad input the official code would die on with a bare ``KeyError``/``TypeError`` (unknown category,
  no GT box) raises :class:`~deepperception.errors.InputDataError` naming the rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from deepperception.boxes import box_iou_many, parse_gt_box
from deepperception.tables import require_columns
from deepperception.errors import ConfigError, InputDataError
from deepperception.eval import strict as strict_mod
from deepperception.eval.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, group_cis
from deepperception.eval.groups import DEFAULT_ALL, DEFAULT_SEEN, DOMAIN_GROUPS, group_indices
from deepperception.eval.parsing import OFFICIAL_BBOX_PATTERNS, is_inside_answer, official_parse
from deepperception.eval.strict import strict_parse

BENCH_COLUMNS = ("question_id", "category", "answer")
IOU_THRESHOLD = 0.5
STAGE = "eval.score"
MissingPolicy = Literal["official", "error"]
EmptyGroupPolicy = Literal["error", "omit"]

PREDICTION_COLUMNS = (
    "question_id", "category", "domain", "gt_bbox", "pred_bbox", "iou", "match_pattern", "correct",
    "strict_bbox", "strict_iou", "strict_correct", "strict_reason", "box_outside_answer", "has_output",
)


@dataclass
class ScoreResult:
    """Everything one scoring run produces.

    ``metrics`` is exactly the official ``metrics.json`` dict. ``predictions`` has one row per
    question in bench order (columns :data:`PREDICTION_COLUMNS`). ``strict``, ``cis`` and
    ``pattern_counts`` are keyed by the same groups as ``metrics``.
    """

    metrics: dict[str, dict[str, dict[str, float | int]]]
    predictions: pd.DataFrame
    strict: dict[str, dict[str, Any]]
    cis: dict[str, dict[str, Any]]
    pattern_counts: dict[str, list[int]]
    num_missing: int
    missing_ids: list[str]
    seen_categories: list[str]
    all_categories: list[str]

    def predictions_table(self) -> pa.Table:
        """:attr:`predictions` as the Arrow table to write to ``predictions.parquet``; see :func:`predictions_table`."""
        return predictions_table(self.predictions)

    def summary(self) -> dict[str, Any]:
        """Run-level facts for ``report.json``."""
        return {
            "num_questions": int(len(self.predictions)),
            "num_outputs": int(self.predictions["has_output"].sum()),
            "num_missing": self.num_missing,
            "missing_ids": self.missing_ids,
            "seen_categories": self.seen_categories,
            "all_categories": self.all_categories,
            "match_pattern_counts": self.pattern_counts,
        }


def predictions_table(predictions: pd.DataFrame) -> pa.Table:
    """A predictions frame as an Arrow table that keeps NaN coordinates as NaN.

    ``pa.Table.from_pandas`` turns every float NaN into null, also inside the box lists, but the
    official per-sample ``<category>.json`` holds ``NaN`` where its ``float()`` read "nan" (e.g.
    ``[nan, 1, 2, 3]`` via regex #6), and null would read back as ``None``. Float and list-of-float
    columns are therefore rebuilt with ``from_pandas=False`` (NaN stays NaN, ``None`` stays null);
    the schema and its pandas metadata are unchanged, so ``to_pandas()`` reads the same frame back.

    >>> df = pd.DataFrame({"pred_bbox": [[float("nan"), 1.0, 2.0, 3.0], None], "iou": [0.0, 0.5]})
    >>> predictions_table(df).column("pred_bbox").to_pylist()
    [[nan, 1.0, 2.0, 3.0], None]
    >>> pa.Table.from_pandas(df).column("pred_bbox").to_pylist()    # what from_pandas alone gives
    [[None, 1.0, 2.0, 3.0], None]
    """
    table = pa.Table.from_pandas(predictions, preserve_index=False)
    for i, field in enumerate(table.schema):
        t = field.type
        if pa.types.is_floating(t) or (pa.types.is_list(t) and pa.types.is_floating(t.value_type)):
            col = predictions[field.name]
            values = col.to_numpy() if pa.types.is_floating(t) else col.tolist()
            table = table.set_column(i, field, pa.array(values, type=t, from_pandas=False))
    return table


def _bad_rows(kind: str, rows: list[tuple[int, str, str]], field_name: str, artifact: str | None) -> InputDataError:
    shown = "; ".join(f"row {r} (question_id={q!r}): {v}" for r, q, v in rows[:10])
    more = f"; ... {len(rows) - 10} more" if len(rows) > 10 else ""
    return InputDataError(f"{kind} in {len(rows)} row(s): {shown}{more}", stage=STAGE, artifact=artifact,
                          row=rows[0][0], field=field_name)


def bench_frame(bench: pa.Table | pd.DataFrame, artifact: str | None = None) -> pd.DataFrame:
    """The three scoring columns of a bench as strings, validated (image bytes never decoded).

    >>> bench_frame(pd.DataFrame({"question_id": ["a"], "category": ["car"], "answer": ["x"], "image": [None]})).columns.tolist()
    ['question_id', 'category', 'answer']
    """
    require_columns(bench, BENCH_COLUMNS, stage=STAGE, artifact=artifact)
    if isinstance(bench, pa.Table):
        df = bench.select(list(BENCH_COLUMNS)).to_pandas()
    else:
        df = bench.loc[:, list(BENCH_COLUMNS)].reset_index(drop=True)
    for col in BENCH_COLUMNS:
        bad = [(i, str(df["question_id"].iat[i]), f"{col}={v!r}") for i, v in enumerate(df[col].tolist())
               if not isinstance(v, str)]
        if bad:
            raise _bad_rows(f"non-string {col}", bad, col, artifact)
    return df


def score(
    bench: pa.Table | pd.DataFrame,
    outputs: Mapping[str, str],
    seen_categories: Sequence[str] = DEFAULT_SEEN,
    all_categories: Sequence[str] = DEFAULT_ALL,
    missing: MissingPolicy = "official",
    *,
    empty_groups: EmptyGroupPolicy = "error",
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    artifact: str | None = None,
) -> ScoreResult:
    """Score decoded model outputs against a KVG-Bench table.

    ``outputs`` maps ``question_id`` to the raw decoded text (special tokens already stripped, as
    the official inference writes it). ``artifact`` only labels errors (e.g. the bench path).
    """
    seen = list(dict.fromkeys(seen_categories))
    cats_all = list(dict.fromkeys(all_categories))
    if missing not in ("official", "error"):
        raise ConfigError(f"missing must be 'official' or 'error', not {missing!r}")
    if empty_groups not in ("error", "omit"):
        raise ConfigError(f"empty_groups must be 'error' or 'omit', not {empty_groups!r}")
    clash = [c for c in cats_all if c in DOMAIN_GROUPS]
    if clash:
        raise ConfigError(f"category names {clash} collide with the report groups {list(DOMAIN_GROUPS)}")
    stray = [c for c in seen if c not in cats_all]
    if stray:
        raise ConfigError(f"seen categories {stray} are not in all categories {cats_all}")

    df = bench_frame(bench, artifact)
    qids = df["question_id"].tolist()
    cats = df["category"].tolist()
    n = len(qids)

    dup = df["question_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise _bad_rows("duplicate question_id", [(i, qids[i], "duplicate") for i in np.flatnonzero(dup)],
                        "question_id", artifact)
    known = set(cats_all)
    unknown = [(i, qids[i], f"category {c!r} not in {cats_all}") for i, c in enumerate(cats) if c not in known]
    if unknown:
        raise _bad_rows("unknown category", unknown, "category", artifact)
    gts: list[tuple[float, float, float, float]] = []
    bad_gt: list[tuple[int, str, str]] = []
    for i, a in enumerate(df["answer"].tolist()):
        box = parse_gt_box(a)
        if box is None:
            bad_gt.append((i, qids[i], f"no <|box_start|>(x1,y1),(x2,y2)<|box_end|> in {a[:120]!r}"))
        else:
            gts.append(box)
    if bad_gt:
        raise _bad_rows("unparsable ground-truth answer", bad_gt, "answer", artifact)

    qid_set = set(qids)
    extra_ids = [q for q in outputs if q not in qid_set]
    if extra_ids:
        raise InputDataError(f"{len(extra_ids)} output(s) for question ids not in the bench, e.g. {extra_ids[:10]}",
                             stage=STAGE, artifact=artifact, row=str(extra_ids[0]), field="question_id")
    non_str = [q for q, t in outputs.items() if not isinstance(t, str)]
    if non_str:
        raise InputDataError(f"{len(non_str)} output(s) are not strings, e.g. {non_str[:10]}", stage=STAGE,
                             artifact=artifact, row=str(non_str[0]), field="answer")
    missing_ids = [q for q in qids if q not in outputs]
    if missing_ids and missing == "error":
        rows = [(i, q, "no output") for i, q in enumerate(qids) if q not in outputs]
        raise _bad_rows("missing output", rows, "answer", artifact)

    # Parse every output once (the official code re-parses per group; the result is the same).
    pred = np.zeros((n, 4), dtype=np.float64)
    pattern = np.zeros(n, dtype=np.int64)
    outside = np.zeros(n, dtype=bool)
    has_output = np.zeros(n, dtype=bool)
    strict_box = np.zeros((n, 4), dtype=np.float64)
    strict_ok = np.zeros(n, dtype=bool)
    reasons: list[str] = []
    for i, q in enumerate(qids):
        text = outputs.get(q)
        has_output[i] = text is not None
        text = "" if text is None else text
        m = official_parse(text)
        pred[i] = m.box
        pattern[i] = m.pattern
        outside[i] = m.span is not None and not is_inside_answer(m.span, text)
        sp = strict_parse(text) if has_output[i] else strict_mod.StrictParse(None, strict_mod.NO_OUTPUT)
        reasons.append(sp.reason)
        if sp.box is not None:
            strict_box[i] = sp.box
            strict_ok[i] = True

    gt = np.asarray(gts, dtype=np.float64).reshape(n, 4)
    with np.errstate(over="ignore", invalid="ignore"):
        # float64 -> float32 rounds like torch.tensor(..., dtype=float32); huge values become inf in both.
        iou = box_iou_many(pred.astype(np.float32), gt.astype(np.float32))
        s_iou = np.where(strict_ok, box_iou_many(strict_box.astype(np.float32), gt.astype(np.float32)), np.float32(0))
    correct = iou >= IOU_THRESHOLD
    s_correct = strict_ok & (s_iou >= IOU_THRESHOLD)

    groups = group_indices(cats, seen, cats_all)
    empty = [g for g, idx in groups.items() if idx.size == 0]
    if empty and empty_groups == "error":
        raise InputDataError(
            f"report group(s) {empty} have no questions; the official scorer divides by zero here and writes no "
            "metrics.json. Pass all/seen categories that match the bench, or empty_groups='omit'.",
            stage=STAGE, artifact=artifact, field="category")
    groups = {g: idx for g, idx in groups.items() if idx.size}

    # Official per-sample values: `max_iou` is the int 0 unless iou.item() > 0.
    iou_py = [v if v > 0 else 0 for v in iou.astype(np.float64).tolist()]
    metrics: dict[str, dict[str, dict[str, float | int]]] = {}
    pattern_counts: dict[str, list[int]] = {}
    strict_summary: dict[str, dict[str, Any]] = {}
    reason_arr = np.asarray(reasons, dtype=object)
    for g, idx in groups.items():
        vals = [iou_py[i] for i in idx.tolist()]
        num = len(vals)
        n_correct = sum(1 for v in vals if v >= IOU_THRESHOLD)
        metrics[g] = {"all": {"Acc": n_correct / num, "IoU": sum(vals) / num, "Num": num}}
        pattern_counts[g] = np.bincount(pattern[idx], minlength=len(OFFICIAL_BBOX_PATTERNS) + 1).tolist()
        rs, counts = np.unique(reason_arr[idx], return_counts=True)
        strict_summary[g] = {
            "Acc": float(s_correct[idx].mean()),
            "IoU": float(s_iou[idx].astype(np.float64).mean()),
            "Num": num,
            "parse_rate": float(strict_ok[idx].mean()),
            "official_hits_outside_answer": int(outside[idx].sum()),
            "official_correct_outside_answer": int((outside[idx] & correct[idx]).sum()),
            "missing": int((~has_output[idx]).sum()),
            "reasons": {str(r): int(c) for r, c in zip(rs, counts)},
        }

    cis = {
        g: {
            "official": c,
            "strict": s,
        }
        for (g, c), s in zip(
            group_cis(correct.astype(np.float64), groups, n_resamples=n_resamples, confidence=confidence, seed=seed).items(),
            group_cis(s_correct.astype(np.float64), groups, n_resamples=n_resamples, confidence=confidence, seed=seed).values(),
        )
    }

    seen_set = set(seen)
    predictions = pd.DataFrame({
        "question_id": qids,
        "category": cats,
        "domain": ["seen" if c in seen_set else "unseen" for c in cats],
        "gt_bbox": [list(r) for r in gt.tolist()],
        "pred_bbox": [list(r) for r in pred.tolist()],
        "iou": np.asarray(iou_py, dtype=np.float64),
        "match_pattern": pattern,
        "correct": correct,
        "strict_bbox": [strict_box[i].tolist() if strict_ok[i] else None for i in range(n)],
        "strict_iou": s_iou.astype(np.float64),
        "strict_correct": s_correct,
        "strict_reason": reasons,
        "box_outside_answer": outside,
        "has_output": has_output,
    }, columns=list(PREDICTION_COLUMNS))
    return ScoreResult(
        metrics=metrics,
        predictions=predictions,
        strict=strict_summary,
        cis=cis,
        pattern_counts=pattern_counts,
        num_missing=len(missing_ids),
        missing_ids=missing_ids,
        seen_categories=seen,
        all_categories=cats_all,
    )
