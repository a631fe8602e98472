"""SFT target variants of the same rows: ``cot`` (the distilled reasoning, then the answer: CoT-SFT)
and ``direct`` (the answer alone: the paper's direct fine-tuning ablation, Table 4). Both arms read
the same SFT dataset version; only the assistant turn differs."""

from __future__ import annotations

import re
from typing import Any, Literal

from deepperception.errors import InputDataError

SFTTarget = Literal["cot", "direct"]
_ANSWER = re.compile(r"<answer>[\S\n\t\v ]*?</answer>")


def direct_answer(text: str, *, row: str | None = None) -> str:
    """The first ``<answer>…</answer>`` of a CoT target (the answer-only target of the same row).

    >>> direct_answer("<think>the left one has a red tail</think><answer>(1,2),(3,4)</answer>")
    '<answer>(1,2),(3,4)</answer>'
    """
    m = _ANSWER.search(text)
    if m is None:
        raise InputDataError("the assistant turn has no <answer>…</answer> to keep for the direct target",
                             stage="sft", row=row, field="messages")
    return m.group(0)


def apply_target(messages: list[dict[str, Any]], target: SFTTarget, *, row: str | None = None) -> list[dict[str, Any]]:
    """``messages`` with the last (assistant) turn rewritten for ``target`` (``cot`` keeps it)."""
    if target == "cot":
        return messages
    last = dict(messages[-1])
    content = last["content"]
    if isinstance(content, str):
        last["content"] = direct_answer(content, row=row)
    else:
        text = "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
        last["content"] = [{"type": "text", "text": direct_answer(text, row=row)}]
    return [*messages[:-1], last]
