"""Grounding pseudo-labels from a VLM server, streamed through ``ChatClient``.

The grounding labeler of model-served runs: it takes an iterable of items
(a generator over a shard is fine), keeps ``concurrency`` requests in flight, and yields one
``LabelOutcome`` per item in order, never raising for a per-item failure. The prompt is the
paper's ``Find and give the bounding box of {E}``; the reply is parsed with the official
evaluator's parser and clamped/checked by ``labeling.clean_box``. Reasons: the client's
(``http_429``, ``timeout``, ``corrupt_image``, ...) plus ``no_box`` (no parsable box in the
reply) and ``degenerate_box`` (zero area after clamping to 0..1000).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

from deepperception.engine.common import ItemFailed
from deepperception.engine.labeling import clean_box
from deepperception.errors import InputDataError
from deepperception.eval.parsing import official_bbox
from deepperception.serving.client import ChatClient, ChatRequest

Box1000 = tuple[int, int, int, int]


def grounding_prompt(entity_name: str) -> str:
    """The paper's labeling prompt.

    >>> grounding_prompt("Boeing 737-800")
    'Find and give the bounding box of Boeing 737-800'
    """
    return f"Find and give the bounding box of {entity_name}"


@dataclass(frozen=True)
class LabelItem:
    """One photo to label: its encoded bytes (PNG/JPEG/WebP, sent as is) and pixel size."""

    key: str
    image: bytes
    width: int
    height: int
    entity_name: str


@dataclass(frozen=True)
class LabelOutcome:
    """``box`` (0-1000) on success; else ``error`` + ``reason``. ``reply`` is the model's raw
    text whenever there was one (kept for audits of ``no_box`` rejects)."""

    key: str
    box: Box1000 | None
    error: str | None
    reason: str | None
    attempts: int
    reply: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def box_from_reply(reply: str, width: int, height: int,
                   box_format: Literal["qwen_0_1000", "pixels"]) -> tuple[Box1000 | None, str | None, str | None]:
    """``(box, reason, error)`` for one reply.

    >>> box_from_reply("<|box_start|>(10,20),(300,400)<|box_end|>", 64, 64, "qwen_0_1000")
    ((10, 20, 300, 400), None, None)
    >>> box_from_reply("a red car", 64, 64, "qwen_0_1000")[1]
    'no_box'
    >>> box_from_reply("(30,20),(30,400)", 64, 64, "qwen_0_1000")[1]
    'degenerate_box'
    """
    box, pattern = official_bbox(reply)
    if pattern == 0:
        return None, "no_box", f"no box in reply: {reply[:200]!r}"
    try:
        return clean_box(box, width, height, box_format), None, None
    except ItemFailed as exc:
        return None, "degenerate_box", str(exc)


class ModelGroundingLabeler:
    """``label_many`` over a ``ChatClient``; ``name`` (``openai:<model>``) goes into ``label_backend``."""

    def __init__(self, client: ChatClient, box_format: Literal["qwen_0_1000", "pixels"] = "qwen_0_1000",
                 max_tokens: int = 128) -> None:
        if box_format not in ("qwen_0_1000", "pixels"):
            raise ValueError(f"box_format must be qwen_0_1000 or pixels, got {box_format!r}")
        self.client = client
        self.box_format = box_format
        self.max_tokens = max_tokens
        self.name = f"openai:{client.model}"

    def _check(self, item: LabelItem) -> LabelItem:
        if not isinstance(item, LabelItem):
            raise TypeError(f"expected a LabelItem, got {type(item).__name__}")
        if not item.entity_name or not item.entity_name.strip():
            raise InputDataError("entity name is empty", stage="label", row=item.key, field="name")
        if self.box_format == "pixels" and not (item.width > 0 and item.height > 0):
            raise InputDataError(f"image size {item.width}x{item.height} is not positive; pixel boxes need it",
                                 stage="label", row=item.key, field="width/height")
        return item

    def label_many(self, items: Iterable[LabelItem]) -> Iterator[LabelOutcome]:
        """One outcome per item, in order; at most the client's ``concurrency`` items held ahead."""
        pending: deque[LabelItem] = deque()  # filled as the client pulls; results come back in that order

        def requests() -> Iterator[ChatRequest]:
            for item in items:
                pending.append(self._check(item))
                yield ChatRequest(key=item.key, text=grounding_prompt(item.entity_name), images=[item.image],
                                  max_tokens=self.max_tokens)

        for res in self.client.run(requests()):
            item = pending.popleft()
            if not res.ok:
                yield LabelOutcome(item.key, None, res.error, res.reason, res.attempts, res.text)
                continue
            box, reason, error = box_from_reply(res.text, item.width, item.height, self.box_format)
            yield LabelOutcome(item.key, box, error, reason, res.attempts, res.text)
