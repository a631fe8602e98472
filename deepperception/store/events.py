"""Who hears about a committed version: a tiny listener registry, called by ``VersionWriter.commit``.

The store must not know about Prefect (``deepperception/`` never imports it), yet a published
checkpoint should be able to start an evaluation through a Prefect deployment trigger. So the
store only announces commits here; ``tasks/events.py`` registers the listener that turns each
announcement into a Prefect event. A listener that fails is logged and ignored: the version is
already committed, and a lost notification must never fail (or roll back) the stage.

>>> heard = []
>>> add_commit_listener(heard.append)
>>> notify_commit(Commit(ref="sft-checkpoint@abc", manifest=None, store_uri="s"))
>>> heard[0].ref
'sft-checkpoint@abc'
>>> remove_commit_listener(heard.append)
>>> notify_commit(Commit(ref="sft-checkpoint@def", manifest=None, store_uri="s"))
>>> len(heard)
1
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Commit:
    """One committed version: its reference, its manifest and the URI of the store holding it."""

    ref: Any
    manifest: Any
    store_uri: str


CommitListener = Callable[[Commit], None]

_listeners: list[CommitListener] = []
_lock = threading.Lock()


def add_commit_listener(fn: CommitListener) -> None:
    """Call ``fn(commit)`` after every commit of this process (adding the same function twice is
    a no-op, so a module that registers at import may be imported again)."""
    with _lock:
        if fn not in _listeners:
            _listeners.append(fn)


def remove_commit_listener(fn: CommitListener) -> None:
    """Stop calling ``fn`` (no error if it was not registered)."""
    with _lock:
        if fn in _listeners:
            _listeners.remove(fn)


def notify_commit(commit: Commit) -> None:
    """Tell every listener about ``commit``; a listener's exception is logged, never raised."""
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        try:
            fn(commit)
        except Exception:  # noqa: BLE001 - a notification must never fail a commit
            log.warning("commit listener %r failed for %s", fn, commit.ref, exc_info=True)
