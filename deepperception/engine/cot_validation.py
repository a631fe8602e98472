"""Validate one teacher reply at generation time, before it becomes a CoT row.

The paper's teacher prompt (``prompts.TEACHER_PROMPT_TEMPLATE``) asks for "the reasoning process
that would identify it": plain prose, and ``TemplateTeacher`` writes exactly that (Planning ->
Visual analysis -> Comparison -> ``Conclusion: The X is the ... at (x1,y1),(x2,y2).``). The
``<think>``/``<answer>`` wrapping is added later by ``distillation.sft_response``. Some teachers
(R1-style models) wrap their reply in those tags anyway, so both forms are accepted:

* **plain**: the whole reply is the CoT; the *conclusion* is the text after its last
  ``Conclusion:`` heading, else its last paragraph (``filtering.conclusion_of``, the same rule the
  filter stage uses);
* **tagged**: exactly ``<think>COT</think><answer>ANSWER</answer>`` (whitespace around is fine);
  the CoT is the think part and the conclusion is the answer part. Half-tagged replies (a lone
  ``<think>``, tags out of order, text after ``</answer>``) are rejected: they would corrupt the
  SFT format.

Rules, checked in this order; the first failing one is the verdict's ``reason``:

1. ``empty_cot``: nothing but whitespace;
2. ``bad_structure``: tags present but not the exact tagged form above, or an empty think part;
3. ``other_box_as_answer``: the conclusion states another entity's box (the teacher reasoned its
   way to the wrong object, or hedged; contrasts belong in the comparison, not the conclusion);
4. ``no_target_box``: the conclusion does not restate the target's box.

Boxes are compared exactly (``(x1,y1),(x2,y2)`` or ``[x1, y1, x2, y2]``, spaces allowed): the
teacher was given the exact strings. Finer content checks (length, naming the target, duplicates)
stay in the filter stage (``engine.filtering``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from deepperception.engine.filtering import conclusion_of

REASONS = ("empty_cot", "bad_structure", "other_box_as_answer", "no_target_box")
_PAIR_BOX = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*(?:,|to|-)?\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_LIST_BOX = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")
_ANY_TAG = re.compile(r"</?(think|answer)>", re.IGNORECASE)
_TAGGED = re.compile(r"\s*<think>(?P<cot>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)


@dataclass(frozen=True)
class CotVerdict:
    """``ok`` with the extracted ``cot``, or a ``reason`` (one of ``REASONS``) and a ``detail``."""

    ok: bool
    reason: str | None
    cot: str | None
    detail: str | None = None


def boxes_in(text: str) -> list[tuple[int, int, int, int]]:
    """Every box stated in ``text``, in order of appearance.

    >>> boxes_in("A at (1,2),(3,4); B at [5, 6, 7, 8] and ( 9, 10 ) to ( 11, 12 )")
    [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)]
    """
    hits = [(m.start(), m.groups()) for rx in (_PAIR_BOX, _LIST_BOX) for m in rx.finditer(text)]
    return [tuple(int(v) for v in g) for _, g in sorted(hits)]  # type: ignore[misc]


def split_reply(text: str) -> tuple[str, str] | None:
    """``(cot, conclusion)`` of a plain or tagged reply; None when its tags are malformed.

    >>> split_reply("<think>looks</think> <answer>(1,2),(3,4)</answer>")
    ('looks', '(1,2),(3,4)')
    >>> split_reply("Planning: p\\n\\nConclusion: at (1,2),(3,4).")
    ('Planning: p\\n\\nConclusion: at (1,2),(3,4).', ' at (1,2),(3,4).')
    >>> split_reply("<think>half") is None
    True
    """
    if not _ANY_TAG.search(text):
        cot = text.strip()
        return cot, conclusion_of(cot)
    m = _TAGGED.fullmatch(text)
    if m is None or _ANY_TAG.search(m.group("cot")) or _ANY_TAG.search(m.group("answer")) or not m.group("cot").strip():
        return None
    return m.group("cot").strip(), m.group("answer")


def validate_cot_reply(text: str | None, entities: Sequence[dict], target_index: int) -> CotVerdict:
    """Judge one teacher reply for the entity ``entities[target_index]`` (``[{name, box}]``, 0-1000).

    >>> ents = [{"name": "A", "box": [1, 2, 3, 4]}, {"name": "B", "box": [50, 60, 70, 80]}]
    >>> validate_cot_reply("Comparison: B differs.\\n\\nConclusion: The A is at (1,2),(3,4).", ents, 0).ok
    True
    >>> validate_cot_reply("Conclusion: The A is at (50,60),(70,80).", ents, 0).reason
    'other_box_as_answer'
    >>> validate_cot_reply("Conclusion: it is the left one.", ents, 0).reason
    'no_target_box'
    >>> validate_cot_reply("<think>x</think>", ents, 0).reason, validate_cot_reply("  ", ents, 0).reason
    ('bad_structure', 'empty_cot')
    """
    if not 0 <= target_index < len(entities):
        raise ValueError(f"target_index {target_index} outside the {len(entities)} entities")
    if text is None or not text.strip():
        return CotVerdict(False, "empty_cot", None, "reply is empty")
    parts = split_reply(text)
    if parts is None:
        return CotVerdict(False, "bad_structure", None,
                          f"tags present but not <think>..</think><answer>..</answer>: {text.strip()[:160]!r}")
    cot, conclusion = parts
    target = tuple(int(v) for v in entities[target_index]["box"])
    stated = set(boxes_in(conclusion))
    for j, ent in enumerate(entities):
        other = tuple(int(v) for v in ent["box"])
        if j != target_index and other != target and other in stated:
            return CotVerdict(False, "other_box_as_answer", None,
                              f"conclusion gives {ent['name']!r}'s box {list(other)}, not the target's {list(target)}: "
                              f"{conclusion.strip()[:160]!r}")
    if target not in stated:
        return CotVerdict(False, "no_target_box", None,
                          f"conclusion does not restate the target box {list(target)}: {conclusion.strip()[:160]!r}")
    return CotVerdict(True, None, cot)
