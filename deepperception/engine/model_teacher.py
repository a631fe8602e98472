"""A VLM CoT teacher streamed through ``ChatClient``, every reply validated.

The CoT teacher of model-served runs: ``generate_many`` takes the
``CotRequest`` s of a shard (any iterable), keeps ``concurrency`` requests in flight and yields
one ``CotOutcome`` per request in order, never raising for a per-item failure. A reply that
fails ``cot_validation.validate_cot_reply`` comes back with ``reason="invalid_cot"``, the rule
it broke in ``rule`` (``bad_structure``, ``no_target_box``, ...) and the raw ``reply``, so the
data card can count rejects per rule and a rerun asks again for exactly those questions.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

from deepperception.engine.cot_validation import validate_cot_reply
from deepperception.engine.distillation import CotRequest
from deepperception.serving.client import ChatClient, ChatRequest


@dataclass(frozen=True)
class CotOutcome:
    key: str
    """The request's ``question_id``."""
    cot: str | None
    error: str | None
    reason: str | None
    attempts: int
    rule: str | None = None
    """For ``reason == "invalid_cot"``: the validation rule the reply broke."""
    reply: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ModelTeacher:
    """``generate_many`` over a ``ChatClient``; ``name`` (``openai:<model>``) goes into ``teacher_backend``."""

    def __init__(self, client: ChatClient, temperature: float | None = 0.7, max_tokens: int = 1024) -> None:
        self.client = client
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.name = f"openai:{client.model}"

    def generate_many(self, requests: Iterable[CotRequest]) -> Iterator[CotOutcome]:
        pending: deque[CotRequest] = deque()

        def chat() -> Iterator[ChatRequest]:
            for req in requests:
                if not isinstance(req, CotRequest):
                    raise TypeError(f"expected a CotRequest, got {type(req).__name__}")
                pending.append(req)
                yield ChatRequest(key=req.question_id, text=req.prompt, images=[req.image_png],
                                  max_tokens=self.max_tokens, temperature=self.temperature)

        for res in self.client.run(chat()):
            req = pending.popleft()
            if not res.ok:
                yield CotOutcome(req.question_id, None, res.error, res.reason, res.attempts, reply=res.text)
                continue
            verdict = validate_cot_reply(res.text, req.entities, req.target_index)
            if verdict.ok:
                yield CotOutcome(req.question_id, verdict.cot, None, None, res.attempts, reply=res.text)
            else:
                yield CotOutcome(req.question_id, None, f"{verdict.reason}: {verdict.detail}", "invalid_cot",
                                 res.attempts, rule=verdict.reason, reply=res.text)
