"""Knowledge cards for real entities, written by an LLM behind an OpenAI-compatible endpoint.

The synthetic domain ships its cards; real datasets (FGVC-Aircraft variants, Stanford Cars
classes, iNat species, Food101 dishes) ship only names. The CoT teacher needs to know what
distinguishes an entity visually, so each entity gets a short card from a text-only request
(``KNOWLEDGE_PROMPT``). Cards are:

* **cached** per ``(model, prompt hash, entity_id)`` (``CardCache``; ``DirCardCache`` keeps one
  JSON file per key, written atomically), so a rerun, a resumed shard or a second dataset version
  with the same entities costs nothing, and a changed prompt or model never reuses stale cards;
* **versioned**: ``knowledge_prompt_hash()`` goes into the stage's version hash;
* **validated** (``validate_card``): non-empty, within length bounds, not an echo of the prompt;
  a reject is a ``CardOutcome`` with ``reason="invalid_card"`` and is never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, runtime_checkable

from deepperception.domain.entity import Entity
from deepperception.serving.client import ChatClient, ChatRequest

KNOWLEDGE_PROMPT = (
    "You are an expert in fine-grained visual recognition of {category}. "
    'Write a knowledge card for "{name}" ({category}): 2 to 4 sentences naming the visual features that '
    "identify it in a photograph and distinguish it from similar {category} (overall shape and proportions, "
    "colours and markings, distinctive parts and their arrangement). Only state features a photo can show; "
    "no history, no names of other entities, no lists or headings."
)
MIN_CARD_CHARS = 40
MAX_CARD_CHARS = 1500
CARD_MAX_TOKENS = 256


def knowledge_prompt(entity: Entity) -> str:
    """The request text for one entity.

    >>> e = Entity(entity_id="aircraft/a320", category="aircraft", name="A320", split="seen", knowledge_card="")
    >>> knowledge_prompt(e)[:60]
    'You are an expert in fine-grained visual recognition of airc'
    """
    return KNOWLEDGE_PROMPT.format(category=entity.category, name=entity.name)


def knowledge_prompt_hash() -> str:
    """sha256 of the prompt template and its generation settings (16 hex chars), for versions.

    >>> len(knowledge_prompt_hash()), knowledge_prompt_hash() == knowledge_prompt_hash()
    (16, True)
    """
    spec = json.dumps({"prompt": KNOWLEDGE_PROMPT, "max_tokens": CARD_MAX_TOKENS,
                       "min_chars": MIN_CARD_CHARS, "max_chars": MAX_CARD_CHARS}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def validate_card(text: str | None, prompt: str) -> str | None:
    """Why a card is unusable, or None. An *echo* repeats most of the prompt's 8-word runs.

    >>> p = KNOWLEDGE_PROMPT.format(category="cars", name="Audi TT")
    >>> validate_card("The Audi TT has a rounded, symmetrical coupe roof and circular wheel arches.", p) is None
    True
    >>> validate_card("", p), validate_card("Short.", p)
    ('card is empty', 'card has 6 chars < 40')
    >>> validate_card("Sure! " + p, p)
    'card echoes the prompt'
    """
    if text is None or not text.strip():
        return "card is empty"
    card = text.strip()
    if len(card) < MIN_CARD_CHARS:
        return f"card has {len(card)} chars < {MIN_CARD_CHARS}"
    if len(card) > MAX_CARD_CHARS:
        return f"card has {len(card)} chars > {MAX_CARD_CHARS}"
    pw, cw = _words(prompt), _words(card)
    grams = lambda w: {tuple(w[i:i + 8]) for i in range(len(w) - 7)}  # noqa: E731
    pg = grams(pw)
    if pg and len(pg & grams(cw)) >= 0.5 * len(pg):
        return "card echoes the prompt"
    return None


@runtime_checkable
class CardCache(Protocol):
    """Where generated cards are kept across runs (``key`` from ``card_cache_key``)."""

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, text: str) -> None: ...


def card_cache_key(model: str, prompt_hash: str, entity_id: str) -> str:
    """A filesystem-safe key for ``(model, prompt hash, entity_id)``.

    >>> k = card_cache_key("Qwen2-72B", "abc", "cars/audi-tt")
    >>> len(k), k == card_cache_key("Qwen2-72B", "abd", "cars/audi-tt")
    (64, False)
    """
    return hashlib.sha256(json.dumps([model, prompt_hash, entity_id]).encode()).hexdigest()


class DirCardCache:
    """One JSON file per key under ``path`` (``{model, prompt_hash, entity_id, card}`` is the
    caller's business; this stores ``{"key", "card"}``), written to a temp file then renamed,
    so a crash never leaves a half-written card and concurrent writers never interleave."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key) or key.startswith("."):
            raise ValueError(f"cache key {key!r} is not a plain file name")
        return self.path / f"{key}.json"

    def get(self, key: str) -> str | None:
        f = self._file(key)
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable entry: regenerate (and overwrite) rather than fail the stage
        card = data.get("card") if isinstance(data, dict) else None
        return card if isinstance(card, str) and data.get("key") == key else None

    def put(self, key: str, text: str) -> None:
        f = self._file(key)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"key": key, "card": text}, out, ensure_ascii=False)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, f)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class CardOutcome:
    """``card`` on success (``cached`` says it came from the cache, ``attempts == 0``); else
    ``error`` + ``reason`` (the client's codes, or ``invalid_card``)."""

    entity_id: str
    card: str | None
    error: str | None
    reason: str | None
    attempts: int
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def generate_cards(entities: Iterable[Entity], client: ChatClient, cache: CardCache | None = None) -> Iterator[CardOutcome]:
    """One outcome per entity, in order; cached cards are not requested again."""
    phash = knowledge_prompt_hash()
    pending: deque[tuple[Entity, str, str | None]] = deque()  # (entity, key, cached card) as pulled

    def requests() -> Iterator[ChatRequest]:
        for e in entities:
            key = card_cache_key(client.model, phash, e.entity_id)
            hit = cache.get(key) if cache is not None else None
            pending.append((e, key, hit))
            if hit is None:
                yield ChatRequest(key=e.entity_id, text=knowledge_prompt(e), max_tokens=CARD_MAX_TOKENS)

    results = client.run(requests())
    while True:
        if not pending:
            res = next(results, None)  # pulls more entities (and their cache lookups)
            if res is None and not pending:
                return
        else:
            res = None
        while pending and pending[0][2] is not None:
            e, _, hit = pending.popleft()
            yield CardOutcome(e.entity_id, hit, None, None, 0, cached=True)
        if not pending:
            continue
        if res is None:
            res = next(results)
        e, key, _ = pending.popleft()
        if not res.ok:
            yield CardOutcome(e.entity_id, None, res.error, res.reason, res.attempts)
            continue
        why = validate_card(res.text, knowledge_prompt(e))
        if why is not None:
            yield CardOutcome(e.entity_id, None, f"{why}: {res.text.strip()[:160]!r}", "invalid_card", res.attempts)
            continue
        card = res.text.strip()
        if cache is not None:
            cache.put(key, card)
        yield CardOutcome(e.entity_id, card, None, None, res.attempts)
