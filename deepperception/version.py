"""Code and config identities used in artifact lineage.

``code_version()`` hashes the package's own source files, so any code change gives new
artifact versions even in an uncommitted tree (a git SHA alone would miss that, and Prefect's
``TASK_SOURCE`` cache policy only hashes the task body, not the library it calls).
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from deepperception import __version__

_ROOT = Path(__file__).resolve().parent.parent
_SOURCE_DIRS = ("deepperception", "tasks", "flows")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form every hash in this package is taken of.

    >>> canonical_json({"b": 1, "a": [1, 2]})
    '{"a":[1,2],"b":1}'
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def short_hash(obj: Any, length: int = 16) -> str:
    """Hex sha256 prefix of ``canonical_json(obj)`` (strings are hashed as given).

    >>> short_hash("abc", 8)
    'ba7816bf'
    """
    data = obj if isinstance(obj, str) else canonical_json(obj)
    return hashlib.sha256(data.encode()).hexdigest()[:length]


def config_hash(config: BaseModel | dict[str, Any] | None) -> str:
    """Stable hash of a stage config (pydantic model or plain dict)."""
    if config is None:
        return short_hash({})
    payload = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    return short_hash(payload)


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """Hash of every ``.py`` file of the package, the thin tasks and the flows."""
    h = hashlib.sha256()
    for d in _SOURCE_DIRS:
        base = _ROOT / d
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            h.update(str(path.relative_to(_ROOT)).encode())
            h.update(b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()[:10]


def code_version() -> str:
    """``<package version>+src.<source hash>``, e.g. ``0.1.0+src.1a2b3c4d5e``."""
    return f"{__version__}+src.{source_hash()}"


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The checkout's commit, with ``-dirty`` when files differ; None outside a git tree."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_ROOT, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=_ROOT, capture_output=True, text=True, timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
