"""Prompts, verbatim from the official code (official-code.md §2.2, §2.10, §4.1, §4.4).

Kept in one module so that training, RL filtering and evaluation can never drift apart.
"""

from __future__ import annotations

from typing import Literal, get_args

PromptMode = Literal["r1", "baseline", "cot", "fgvr"]
PROMPT_MODES: tuple[str, ...] = get_args(PromptMode)

# Note the TWO spaces after the question: the official template has them.
R1_SUFFIX = "  Output the thinking process in <think> </think> and final answer (bounding box) in <answer> </answer> tags."
COT_SUFFIX = ". Let's think step by step"
# Official ``inference.py`` @ ae5e8a8 ``CLASSIFICATION_TEMPLATE`` (FGVR multiple choice), verbatim,
# two spaces after the question. The single source of truth (``eval.fgvr`` imports it).
CLASSIFICATION_TEMPLATE = "{Question}  Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
FGVR_SUFFIX = CLASSIFICATION_TEMPLATE.removeprefix("{Question}")

GROUNDING_QUESTION = "Find and give the bounding box of <|object_ref_start|>{entity}<|object_ref_end|>"
# Our FGVR question stem (no official data survives, official-code.md §2.10); the lettered
# options follow it on their own lines (``eval.fgvr.build_question``).
FGVR_QUESTION = "What is the name of the {category} in this image?"

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


def fgvr_question(category: str) -> str:
    """The FGVR question stem for an image of ``category`` (options are appended separately).

    >>> fgvr_question("aircraft")
    'What is the name of the aircraft in this image?'
    """
    return FGVR_QUESTION.format(category=category)


def user_text(question: str, mode: PromptMode = "r1") -> str:
    """The user-turn text for a question under a prompt mode.

    ``r1`` is the official DeepPerception prompt, ``baseline`` the raw question (how the official
    script evaluates base Qwen2-VL), ``cot`` the zero-shot "Let's think step by step" variant,
    ``fgvr`` the official classification template (``question`` is then the full multiple-choice
    question, stem plus lettered options).

    >>> user_text("Q")
    'Q  Output the thinking process in <think> </think> and final answer (bounding box) in <answer> </answer> tags.'
    >>> user_text("Q", "baseline")
    'Q'
    >>> user_text("Q", "cot")
    "Q. Let's think step by step"
    >>> user_text("Q?\\nA. x", "fgvr") == CLASSIFICATION_TEMPLATE.format(Question="Q?\\nA. x")
    True
    >>> user_text("Q", "fgvr")
    'Q  Output the thinking process in <think> </think> and final answer in <answer> </answer> tags.'
    """
    if mode == "r1":
        return question + R1_SUFFIX
    if mode == "baseline":
        return question
    if mode == "cot":
        return question + COT_SUFFIX
    if mode == "fgvr":
        return question + FGVR_SUFFIX
    raise ValueError(f"unknown prompt mode {mode!r}; expected one of {', '.join(PROMPT_MODES)}")


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
