"""Reading chat messages: the text of one completion or message turn.

A neutral home (no parser, no reward) for what SFT's target check and GRPO's rewards both read,
so importing it does not put the evaluator's parser into SFT's code version.
"""

from __future__ import annotations

from typing import Any


def completion_text(completion: Any) -> str:
    """The text of one completion, plain or conversational.

    >>> completion_text("<answer>x</answer>")
    '<answer>x</answer>'
    >>> completion_text([{"role": "assistant", "content": "hi"}])
    'hi'
    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    'ab'
    >>> completion_text([{"role": "assistant", "content": None}]), completion_text([[]]), completion_text(None)
    ('', '', '')
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    # Anything else a hostile or broken server could hand over (None, a number, nested lists) is
    # text or nothing, never an exception inside a reward function (tests/faults fuzzes this).
    msg = completion[0] if isinstance(completion, (list, tuple)) and completion else {}
    content = msg.get("content", "") if isinstance(msg, dict) else ""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        return str(content)
    return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
