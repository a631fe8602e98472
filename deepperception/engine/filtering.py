"""Stage 5: reject CoTs that would teach the wrong thing.

A teacher can fail (HTTP error), ramble, cut off mid-sentence, wrap its own ``<think>`` tags
(which would corrupt the ``<think>..</think><answer>..</answer>`` training format), or reason
its way to a different object than the target. The checks below run in a fixed order and the
first failing one becomes the row's ``reason``, so rejection statistics are unambiguous.
Distinct from the paper's RL *difficulty* filter (drop 0/4 and 4/4 items), which needs the
stage-1 model and lives with GRPO training.
"""

from __future__ import annotations

import re
from typing import Sequence

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from deepperception import boxes
from deepperception.engine.common import require_columns

REASONS = (
    "teacher_error", "empty_cot", "too_short", "too_long", "tag_markup", "conclusion_missing_target",
    "conclusion_missing_box", "conclusion_box_mismatch", "duplicate_question", "duplicate_cot",
)
_CONCLUSION_RE = re.compile(r"conclusion\W{0,4}[:\-]", re.IGNORECASE)
_PAIR_BOX_RE = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*(?:,|to|-)?\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_LIST_BOX_RE = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")
_TAG_RE = re.compile(r"</?(think|answer)>|<\|(box|object_ref)_(start|end)\|>")


class FilterConfig(BaseModel):
    """Thresholds for ``filter_cot``."""

    model_config = ConfigDict(extra="forbid")

    min_cot_chars: int = Field(120, ge=0, description="Shorter CoTs are truncated or content-free.")
    max_cot_chars: int = Field(
        6000, ge=1, description="Longer CoTs risk the SFT cutoff_len (4096 tokens, official config) once the image is added."
    )
    min_conclusion_iou: float = Field(
        1.0, ge=0.0, le=1.0, description="IoU the conclusion's box must reach against the target box (1.0 = identical)."
    )
    require_target_in_conclusion: bool = Field(True, description="The conclusion must name the target entity.")
    dedupe: bool = Field(True, description="Drop repeated question ids and repeated (whitespace-normalised) CoT texts.")


def conclusion_of(cot: str) -> str:
    """The text after the last ``Conclusion:`` heading, else the last non-empty paragraph.

    >>> conclusion_of("Planning: x\\n\\nConclusion: It is A at (1,2),(3,4).")
    ' It is A at (1,2),(3,4).'
    >>> conclusion_of("first\\n\\nlast para")
    'last para'
    """
    heads = list(_CONCLUSION_RE.finditer(cot))
    if heads:
        return cot[heads[-1].end():]
    paras = [p for p in re.split(r"\n\s*\n", cot) if p.strip()]
    return paras[-1] if paras else ""


def last_box(text: str) -> tuple[int, int, int, int] | None:
    """The last ``(x1,y1),(x2,y2)`` (or ``[x1, y1, x2, y2]``) box in ``text``.

    >>> last_box("at (1,2),(3,4) then ( 5, 6 ), ( 7, 8 )")
    (5, 6, 7, 8)
    >>> last_box("no box") is None
    True
    """
    hits = [(m.start(), m.groups()) for m in _PAIR_BOX_RE.finditer(text)] + [(m.start(), m.groups()) for m in _LIST_BOX_RE.finditer(text)]
    if not hits:
        return None
    return tuple(int(v) for v in max(hits)[1])  # type: ignore[return-value]


def check_cot(cot: str | None, error: str | None, target: str, target_box: Sequence[int], cfg: FilterConfig) -> tuple[str, str] | None:
    """``(reason, detail)`` for the first failed content check, or None if the CoT is usable."""
    if error is not None:
        return "teacher_error", error
    if cot is None or not cot.strip():
        return "empty_cot", "CoT is empty"
    n = len(cot)
    if n < cfg.min_cot_chars:
        return "too_short", f"{n} chars < {cfg.min_cot_chars}"
    if n > cfg.max_cot_chars:
        return "too_long", f"{n} chars > {cfg.max_cot_chars}"
    tag = _TAG_RE.search(cot)
    if tag:
        return "tag_markup", f"CoT contains {tag.group(0)!r}"
    conclusion = conclusion_of(cot)
    if cfg.require_target_in_conclusion and " ".join(target.lower().split()) not in " ".join(conclusion.lower().split()):
        return "conclusion_missing_target", f"conclusion does not name {target!r}: {conclusion.strip()[:160]!r}"
    box = last_box(conclusion)
    if box is None:
        return "conclusion_missing_box", f"no box in conclusion: {conclusion.strip()[:160]!r}"
    iou = boxes.box_iou(box, target_box)
    if not iou >= cfg.min_conclusion_iou:
        return "conclusion_box_mismatch", f"conclusion box {list(box)} vs target {list(target_box)} (IoU {iou:.3f})"
    return None


def filter_cot(cot: pa.Table, cfg: FilterConfig | None = None) -> tuple[pa.Table, pa.Table]:
    """Split distilled CoT rows into ``kept`` (input schema) and ``rejected`` (input schema plus
    ``reason``, one of ``REASONS``, and a human-readable ``reason_detail``)."""
    return CotFilter(cfg).apply(cot)


class CotFilter:
    """:func:`filter_cot` over a table streamed batch by batch: the duplicate checks remember what
    earlier batches kept (a question id and a 16-byte digest per kept CoT, not the texts)."""

    def __init__(self, cfg: FilterConfig | None = None) -> None:
        self.cfg = cfg or FilterConfig()
        self.seen_q: set[str] = set()
        self.seen_text: set[bytes] = set()

    def apply(self, cot: pa.Table | pa.RecordBatch) -> tuple[pa.Table, pa.Table]:
        if isinstance(cot, pa.RecordBatch):
            cot = pa.Table.from_batches([cot])
        return self._apply(cot)

    def _apply(self, cot: pa.Table) -> tuple[pa.Table, pa.Table]:
        import hashlib

        cfg = self.cfg
        require_columns(cot, ["question_id", "target_entity", "target_box", "cot", "error"], stage="filter")
        qids = cot.column("question_id").to_pylist()
        texts = cot.column("cot").to_pylist()
        errors = cot.column("error").to_pylist()
        targets = cot.column("target_entity").to_pylist()
        tboxes = cot.column("target_box").to_pylist()
        seen_q, seen_text = self.seen_q, self.seen_text
        keep, reject, reasons, details = [], [], [], []
        for i in range(cot.num_rows):
            verdict = check_cot(texts[i], errors[i], targets[i], tboxes[i], cfg)
            if verdict is None and cfg.dedupe:
                norm = hashlib.blake2b(" ".join(texts[i].split()).encode(), digest_size=16).digest()
                if qids[i] in seen_q:
                    verdict = ("duplicate_question", f"question_id {qids[i]} seen before")
                elif norm in seen_text:
                    verdict = ("duplicate_cot", "identical CoT text already kept")
                else:
                    seen_q.add(qids[i])
                    seen_text.add(norm)
            if verdict is None:
                keep.append(i)
            else:
                reject.append(i)
                reasons.append(verdict[0])
                details.append(verdict[1])
        rejected = cot.take(pa.array(reject, pa.int64()))
        rejected = rejected.append_column(pa.field("reason", pa.string(), nullable=False), pa.array(reasons, pa.string()))
        rejected = rejected.append_column(pa.field("reason_detail", pa.string(), nullable=False), pa.array(details, pa.string()))
        return cot.take(pa.array(keep, pa.int64())), rejected
