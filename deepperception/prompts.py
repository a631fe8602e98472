"""Prompts, verbatim from the official code (official-code.md §2.2, §4.1, §4.4).

Kept in one module so that training, RL filtering and evaluation can never drift apart.
"""

from __future__ import annotations

from typing import Literal

PromptMode = Literal["r1", "baseline", "cot"]

# Note the TWO spaces after the question: the official template has them.
R1_SUFFIX = "  Output the thinking process in <think> </think> and final answer (bounding box) in <answer> </answer> tags."
COT_SUFFIX = ". Let's think step by step"

GROUNDING_QUESTION = "Find and give the bounding box of <|object_ref_start|>{entity}<|object_ref_end|>"

# The paper's knowledge-guided CoT teacher prompt (arXiv 2503.12797v3 appendix), with the
# newlines between its "Note that" sentences restored. The image goes before this text.
TEACHER_PROMPT_TEMPLATE = (
    "This image shows {entity_list}. The bounding box of {target} is {target_box}. "
    "Give the reasoning process that would identify it based on the image and your knowledge\n"
    "Note that you MUST pay attention to the differences from other objects of the same type in this image "
    "and make a detailed comparison between them to find evidence that distinguishes this object from the others\n"
    "Note that you MUST first analyze the visual features that help you make a judgment, and then compare the objects\n"
    'Note that when an object is "[Unknown]", you can still make a comparison based on its visual features without knowing its name'
)


def grounding_question(entity: str) -> str:
    """The KVG question for one entity.

    >>> grounding_question("Falcon A")
    'Find and give the bounding box of <|object_ref_start|>Falcon A<|object_ref_end|>'
    """
    return GROUNDING_QUESTION.format(entity=entity)


def user_text(question: str, mode: PromptMode = "r1") -> str:
    """The user-turn text for a question under a prompt mode.

    ``r1`` is the official DeepPerception prompt, ``baseline`` the raw question (how the official
    script evaluates base Qwen2-VL), ``cot`` the zero-shot "Let's think step by step" variant.

    >>> user_text("Q")
    'Q  Output the thinking process in <think> </think> and final answer (bounding box) in <answer> </answer> tags.'
    >>> user_text("Q", "baseline")
    'Q'
    >>> user_text("Q", "cot")
    "Q. Let's think step by step"
    """
    if mode == "r1":
        return question + R1_SUFFIX
    if mode == "baseline":
        return question
    if mode == "cot":
        return question + COT_SUFFIX
    raise ValueError(f"unknown prompt mode {mode!r}; expected one of r1, baseline, cot")


def grounding_messages(question: str, mode: PromptMode = "r1") -> list[dict]:
    """One user turn, image first then text, no system message (the chat template adds
    Qwen2-VL's default system prompt), as the official ``inference.py`` builds it.

    >>> grounding_messages("Q", "baseline")
    [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'Q'}]}]
    """
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text(question, mode)}]}]


def teacher_prompt(entities: list[tuple[str, str]], target: str, target_box: str) -> str:
    """Fill the paper's teacher prompt. ``entities`` are ``(name, box_string)`` pairs in image order.

    >>> p = teacher_prompt([("A", "(1,2),(3,4)"), ("B", "(5,6),(7,8)")], "B", "(5,6),(7,8)")
    >>> p.splitlines()[0]
    'This image shows A ((1,2),(3,4)), and B ((5,6),(7,8)). The bounding box of B is (5,6),(7,8). Give the reasoning process that would identify it based on the image and your knowledge'
    """
    parts = [f"{name} ({box})" for name, box in entities]
    if len(parts) == 1:
        entity_list = parts[0]
    else:
        entity_list = ", ".join(parts[:-1]) + ", and " + parts[-1]
    return TEACHER_PROMPT_TEMPLATE.format(entity_list=entity_list, target=target, target_box=target_box)
