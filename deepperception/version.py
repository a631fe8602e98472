"""Code and config identities used in artifact lineage.

``code_version()`` hashes the package's own source files, so any code change gives new
artifact versions even in an uncommitted tree (a git SHA alone would miss that, and Prefect's
``TASK_SOURCE`` cache policy only hashes the task body, not the library it calls).
"""

from __future__ import annotations

import ast
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


def code_version(scope: tuple[str, ...] | None = None, shallow: tuple[str, ...] = ()) -> str:
    """``<package version>+src.<source hash>``, e.g. ``0.1.0+src.1a2b3c4d5e``.

    Stages derive their scope from their task function instead (:func:`stage_code_version`);
    this module-level form stays for direct callers. With a ``scope`` (module names, e.g. ``("deepperception.engine.collection",)``), only the source
    of those modules and everything they import from this repository (transitively, including
    imports inside functions) is hashed: editing the evaluator does not invalidate the data engine's
    artifacts, while editing anything a stage runs does. ``shallow`` modules (the thin Prefect task
    module) are hashed without following their imports.
    """
    if scope is None:
        return f"{__version__}+src.{source_hash()}"
    return f"{__version__}+src.{scoped_source_hash(tuple(sorted(scope)), tuple(sorted(shallow)))}"


def stage_code_version(roots: tuple[str, ...] | list[str], code: tuple[str, ...] | None = None,
                       shallow: tuple[str, ...] = ()) -> str | None:
    """The code version of a stage whose task function is ``roots`` (``"pkg.mod:name"``, see
    :mod:`deepperception.code_scope`): ``<package version>+src.<hash of the code it reaches>``.

    ``code``/``shallow`` are the older hand-listed module scopes (:func:`code_version`); given with
    roots they are hashed in addition (they can only widen the scope), alone they are what they
    were. None when there is neither: the store then uses the whole-source :func:`code_version`.
    """
    from deepperception.code_scope import code_scope

    if not roots:
        return code_version(code, shallow) if code else None
    digest = code_scope(tuple(roots)).digest
    if code:
        digest = short_hash([digest, scoped_source_hash(tuple(sorted(code)), tuple(sorted(shallow)))], 10)
    return f"{__version__}+src.{digest}"


def _module_file(name: str) -> Path | None:
    base = _ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # a name imported from a module (a function or class), not a module


def module_closure(roots: tuple[str, ...]) -> list[Path]:
    """Source files of ``roots`` and of every repository module they import, transitively.

    >>> names = {p.name for p in module_closure(("deepperception.boxes",))}
    >>> "boxes.py" in names and "report.py" not in names
    True
    """
    own = set(_SOURCE_DIRS)
    seen: set[Path] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        path = _module_file(name)
        parts = name.split(".")
        # A package's __init__ runs whenever one of its modules is imported.
        stack += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) not in stack]
        if path is None or path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            stack += [n for n in found if n.split(".")[0] in own]
    return sorted(seen)


@functools.lru_cache(maxsize=None)
def scoped_source_hash(scope: tuple[str, ...], shallow: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    files = set(module_closure(scope)) | {p for p in map(_module_file, shallow) if p is not None}
    for path in sorted(files):
        h.update(str(path.relative_to(_ROOT)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:10]


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
