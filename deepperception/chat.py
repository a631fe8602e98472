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
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    msg = completion[0] if completion else {}
    content = msg.get("content", "")
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
