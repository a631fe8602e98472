"""Which of this repository's code a stage runs, derived from its task function: the code in its version.

A stage's artifact version hashes the source of everything its task function can reach, so
editing code a stage runs gives it a new version and editing anything else does not. The
analysis reads the source (``ast``, no import) and works on *top-level symbols*, not whole
modules, because modules here are hubs: ``deepperception.config`` imports every stage's config
class, so a module-level import closure of any task would be the whole package and editing the
evaluator would retrain everything. Starting from the task function (``tasks.sft`` is reached
through ``tasks.training:train_sft_task``), a symbol reaches

* every name its body (decorators, annotations, defaults, nested functions and classes included)
  uses: a function, class or constant of its own module, or an imported one, followed through
  ``import``/``from ... import`` (top-level and inside functions, relative ones too) and attribute
  chains (``collection.collect_batches`` reaches that function, not all of ``collection``);
* a module object used bare (passed, stored): every top-level symbol of that module;
* the module's import-time statements (``<side>``: calls, ``if``/``try`` blocks), for every
  module with a reached symbol and its parent packages;
* a string naming a module (``"-m", "deepperception.training.launch"``, ``"pkg.mod:func"``):
  that module's ``if __name__ == "__main__"`` block (``<main>``) or the named function.

A class is one symbol (all its methods), so calls through ``self`` and overriding are covered.
What this cannot see is a name computed at run time (``getattr(mod, name)``, an import of a
computed string): ``tests/flows/test_partial_reruns.py`` runs the toy reproduction under
``coverage`` and fails if any function a stage executes is not in its scope.

The hash is over the source lines of the reached symbols (decorators included, one module's
symbols in name order), so editing one function of a shared module (``prompts.py``) changes
only the stages that reach that function. Code that never decides what an artifact holds is
kept out on purpose (:data:`OUTSIDE_VERSIONS`, each with the reason).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("deepperception", "tasks", "flows")
"""Top-level packages of this repository; imports of anything else (torch, prefect) are not followed."""

SOURCE_ROOT = Path(__file__).resolve().parent.parent
"""The checkout whose source is analysed (tests point it at an edited copy)."""

OUTSIDE_VERSIONS: dict[str, str] = {
    "deepperception.store": "where and how an artifact's bytes are kept and found (plan, write, "
                            "commit, lease, verify), identical for every stage, not what they are",
    "deepperception.progress": "progress reporting (the UI's progress artifacts), never an artifact's content",
    "tasks.progress": "the Prefect progress sink, never an artifact's content",
    "tasks.events": "the Prefect event sent after a commit, never an artifact's content",
    "tasks.common:forward_library_logs": "forwards library log records to the Prefect run log",
    "tasks.common:RunLogForwarder": "forwards library log records to the Prefect run log",
}
"""Modules (``pkg.mod``, and everything under it) and symbols (``pkg.mod:name``) whose code never
decides what an artifact holds, hence never in a version: editing them reuses every version."""

SIDE = "<side>"
MAIN = "<main>"
_MODULE_STRING = re.compile(r"^(?:%s)(?:\.[A-Za-z_]\w*)*(?::[A-Za-z_]\w*)?$" % "|".join(PACKAGES))


@functools.lru_cache(maxsize=None)
def is_outside(module: str, name: str | None = None) -> bool:
    """Whether ``module`` (or its symbol ``name``) is kept out of versions by :data:`OUTSIDE_VERSIONS`.

    >>> is_outside("deepperception.store.artifacts"), is_outside("deepperception.storehouse")
    (True, False)
    >>> is_outside("tasks.common", "forward_library_logs"), is_outside("tasks.common", "open_store")
    (True, False)
    """
    for key in OUTSIDE_VERSIONS:
        mod, _, sym = key.partition(":")
        if sym:
            if module == mod and name == sym:
                return True
        elif module == mod or module.startswith(mod + "."):
            return True
    return False


@dataclass(frozen=True)
class _Import:
    """What an import binds a name to: a module (``attr`` None) or ``attr`` of ``module``."""

    module: str
    attr: str | None = None


@dataclass
class _Module:
    name: str
    path: Path
    lines: list[str]
    is_package: bool
    defs: dict[str, list[ast.stmt]] = field(default_factory=dict)
    imports: dict[str, list[tuple[ast.stmt, _Import]]] = field(default_factory=dict)
    stars: list[str] = field(default_factory=list)
    side: list[ast.stmt] = field(default_factory=list)
    main: list[ast.stmt] = field(default_factory=list)

    def nodes(self, name: str) -> list[ast.stmt]:
        if name == SIDE:
            return self.side
        if name == MAIN:
            return self.main
        return self.defs.get(name, []) + [stmt for stmt, _ in self.imports.get(name, [])]

    def source(self, node: ast.stmt) -> str:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return "".join(self.lines[start - 1:node.end_lineno])


def _is_main_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from`` import inside ``module``.

    >>> _absolute("deepperception.eval.io", False, ast.parse("from .parsing import x").body[0])
    'deepperception.eval.parsing'
    >>> _absolute("deepperception.store", True, ast.parse("from ..boxes import x").body[0])
    'deepperception.boxes'
    """
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[:len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _import_bindings(module: str, is_package: bool, node: ast.stmt) -> list[tuple[str, _Import]]:
    """``(bound name, target)`` of one import statement; ``*`` is bound as the name ``*``."""
    if isinstance(node, ast.Import):
        return [(a.asname, _Import(a.name)) if a.asname else (a.name.split(".")[0], _Import(a.name.split(".")[0]))
                for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _absolute(module, is_package, node)
        return [(a.asname or a.name, _Import(base, a.name)) for a in node.names]
    return []


def _binding_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
        node, (ast.AnnAssign, ast.AugAssign)) else []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


@dataclass
class _Refs:
    """What one top-level statement uses: dotted name chains, local imports, module-naming strings."""

    chains: list[list[str]] = field(default_factory=list)
    local: dict[str, list[_Import]] = field(default_factory=dict)
    strings: list[str] = field(default_factory=list)


def _chain(node: ast.Attribute) -> list[str] | None:
    parts: list[str] = []
    cur: ast.expr = node
    while isinstance(cur, ast.Attribute):
        parts.append(cur.attr)
        cur = cur.value
    if not isinstance(cur, ast.Name):
        return None
    return [cur.id, *reversed(parts)]


def _refs(mod: _Module, node: ast.stmt) -> _Refs:
    out = _Refs()
    stack: list[ast.AST] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.Import, ast.ImportFrom)) and n is not node:
            for name, target in _import_bindings(mod.name, mod.is_package, n):
                out.local.setdefault(name, []).append(target)
                if name == "*":
                    out.chains.append(["*"])
            continue
        if isinstance(n, ast.Attribute):
            chain = _chain(n)
            if chain is not None:
                out.chains.append(chain)
                continue
        elif isinstance(n, ast.Name):
            out.chains.append([n.id])
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and _MODULE_STRING.match(n.value):
            out.strings.append(n.value)
        stack.extend(ast.iter_child_nodes(n))
    return out


class _Graph:
    """The symbols of one source tree, parsed on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._modules: dict[str, _Module | None] = {}
        self._refs: dict[tuple[str, int], _Refs] = {}

    def module(self, name: str) -> _Module | None:
        if name in self._modules:
            return self._modules[name]
        mod = None
        if name.split(".")[0] in PACKAGES:
            base = self.root.joinpath(*name.split("."))
            for path, pkg in ((base.with_suffix(".py"), False), (base / "__init__.py", True)):
                if path.is_file():
                    mod = self._parse(name, path, pkg)
                    break
        self._modules[name] = mod
        return mod

    def _parse(self, name: str, path: Path, is_package: bool) -> _Module:
        text = path.read_text()
        mod = _Module(name, path, text.splitlines(keepends=True), is_package)
        for i, stmt in enumerate(ast.parse(text, str(path)).body):
            self._top(mod, stmt, top=True, first=i == 0)
        return mod

    def _top(self, mod: _Module, stmt: ast.stmt, top: bool, first: bool = False) -> None:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
                return
            for name, target in _import_bindings(mod.name, mod.is_package, stmt):
                if name == "*":
                    mod.stars.append(target.module)
                else:
                    mod.imports.setdefault(name, []).append((stmt, target))
            return
        names = _binding_names(stmt)
        if names:
            for name in names:
                mod.defs.setdefault(name, []).append(stmt)
            return
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            return  # a docstring (module or attribute): no effect
        if isinstance(stmt, ast.Pass):
            return
        if isinstance(stmt, ast.If) and top and _is_main_guard(stmt.test):
            mod.main.append(stmt)
            return
        if isinstance(stmt, ast.If) and _is_type_checking(stmt.test):
            return  # never executed
        if top:
            mod.side.append(stmt)  # import-time code: hashed and followed whenever the module is
        for child in ast.iter_child_nodes(stmt):  # bindings inside if/try/with blocks
            if isinstance(child, ast.stmt):
                self._top(mod, child, top=False)

    def refs(self, mod: _Module, node: ast.stmt) -> _Refs:
        key = (mod.name, id(node))
        if key not in self._refs:
            self._refs[key] = _refs(mod, node)
        return self._refs[key]


@dataclass(frozen=True)
class CodeScope:
    """The code a stage runs: its roots, the reached symbols (``(module, name)``) and their files."""

    roots: tuple[str, ...]
    symbols: frozenset[tuple[str, str]]
    files: tuple[str, ...]
    digest: str
    parents: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def why(self, module: str, name: str | None = None) -> list[str]:
        """How ``module`` (or its symbol ``name``) was reached: the chain of ``module:symbol`` from a root."""
        hits = sorted(s for s in self.symbols if s[0] == module and (name is None or s[1] == name))
        if not hits:
            return []
        chain, cur = [], hits[0]
        while cur is not None:
            chain.append(f"{cur[0]}:{cur[1]}")
            cur = self.parents.get(cur)
        return chain[::-1]


class _Walker:
    def __init__(self, graph: _Graph) -> None:
        self.g = graph
        self.hashed: dict[tuple[str, str], tuple[str, str] | None] = {}
        self.queue: list[tuple[str, str]] = []
        self.expanded: set[tuple[str, str]] = set()

    def reach(self, sym: tuple[str, str], parent: tuple[str, str] | None, expand: bool = True) -> None:
        module, name = sym
        if is_outside(module, name):
            return
        mod = self.g.module(module)
        if mod is None:
            return
        if sym not in self.hashed:
            self.hashed[sym] = parent
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # import-time code of the module and its packages
                self.reach((".".join(parts[:i]), SIDE), sym)
        if expand and sym not in self.expanded:
            self.queue.append(sym)

    def run(self, roots: list[tuple[str, str]]) -> None:
        for r in roots:
            self.reach(r, None)
        while self.queue:
            sym = self.queue.pop()
            if sym in self.expanded:
                continue
            self.expanded.add(sym)
            self._expand(sym)

    def _expand(self, sym: tuple[str, str]) -> None:
        mod = self.g.module(sym[0])
        assert mod is not None
        module, name = sym
        if name == SIDE:
            nodes = mod.side
        elif name == MAIN:
            nodes = mod.main
        elif name in mod.defs:
            nodes = mod.defs[name]
        else:
            nodes = []
        if name in mod.imports and name not in mod.defs:
            for _, target in mod.imports[name]:  # an import used bare: what it binds, whole
                self.target(target, [], sym)
        for node in nodes:
            refs = self.g.refs(mod, node)
            for chain in refs.chains:
                self.chain(mod, chain, refs.local, sym)
            for text in refs.strings:
                self.string(text, sym)
        if name not in (SIDE, MAIN) and name not in mod.defs and name not in mod.imports:
            self.whole(mod, sym)  # a name the module binds at run time: take the module whole

    def chain(self, mod: _Module, chain: list[str], local: dict[str, list[_Import]], parent) -> None:
        first, rest = chain[0], chain[1:]
        if first == "*":
            for target in local.get("*", []):
                self.target(_Import(target.module), [], parent)
            return
        if first in local:
            for target in local[first]:
                self.target(target, rest, parent)
            return
        if first in mod.defs:
            self.reach((mod.name, first), parent)
        if first in mod.imports:
            self.reach((mod.name, first), parent, expand=False)  # the import line itself
            for _, target in mod.imports[first]:
                self.target(target, rest, (mod.name, first))
        elif first not in mod.defs:
            for star in mod.stars:
                self.target(_Import(star, first), rest, parent)

    def target(self, target: _Import, rest: list[str], parent) -> None:
        if target.attr is not None:
            sub = f"{target.module}.{target.attr}"
            if self.g.module(sub) is not None:
                self.target(_Import(sub), rest, parent)
            else:
                self.member(target.module, target.attr, rest, parent)
            return
        mod = self.g.module(target.module)
        if mod is None:
            return
        if not rest:
            self.whole(mod, parent)
        elif self.g.module(f"{target.module}.{rest[0]}") is not None:
            self.target(_Import(f"{target.module}.{rest[0]}"), rest[1:], parent)
        else:
            self.member(target.module, rest[0], rest[1:], parent)

    def member(self, module: str, name: str, rest: list[str], parent) -> None:
        mod = self.g.module(module)
        if mod is None or is_outside(module, name):
            return
        if name in mod.defs:
            self.reach((module, name), parent)
        if name in mod.imports:
            self.reach((module, name), parent, expand=False)
            for _, target in mod.imports[name]:
                self.target(target, rest, (module, name))
        if name not in mod.defs and name not in mod.imports:
            if mod.stars:
                for star in mod.stars:
                    self.target(_Import(star, name), rest, parent)
            else:
                self.whole(mod, parent)

    def whole(self, mod: _Module, parent) -> None:
        self.reach((mod.name, SIDE), parent)
        for name in [*mod.defs, *mod.imports]:
            self.reach((mod.name, name), parent)
        for star in mod.stars:
            self.target(_Import(star), [], parent)

    def string(self, text: str, parent) -> None:
        module, _, attr = text.partition(":")
        if self.g.module(module) is None:
            return
        if attr:
            self.member(module, attr, [], parent)
        else:
            self.reach((module, MAIN), parent)


def parse_root(text: str) -> tuple[str, str]:
    """``"pkg.mod:func"`` -> ``("pkg.mod", "func")``; a root names a top-level symbol of a module.

    >>> parse_root("tasks.training:train_sft_task")
    ('tasks.training', 'train_sft_task')
    """
    module, sep, name = text.partition(":")
    if not sep or not module or not name or "." in name:
        raise ValueError(f"a code scope root is 'package.module:top_level_name', got {text!r}")
    return module, name


@functools.lru_cache(maxsize=8)
def _graph(root: Path) -> _Graph:
    return _Graph(root)  # parses each module once, on first use, for every scope of this tree


@functools.lru_cache(maxsize=256)
def _scope(roots: tuple[str, ...], root: Path) -> CodeScope:
    graph = _graph(root)
    walker = _Walker(graph)
    parsed = [parse_root(r) for r in roots]
    for module, name in parsed:
        mod = graph.module(module)
        if mod is None or not mod.nodes(name):
            raise ValueError(f"code scope root {module}:{name} is not a top-level name of a module of this "
                             f"repository (under {', '.join(PACKAGES)})")
    walker.run(parsed)
    h = hashlib.sha256()
    files: set[str] = set()
    symbols = sorted(walker.hashed)
    for module, name in symbols:
        mod = graph.module(module)
        assert mod is not None
        nodes = mod.nodes(name)
        if not nodes:
            continue
        files.add(mod.path.relative_to(root).as_posix())
        h.update(f"{module}:{name}\0".encode())
        for node in nodes:
            h.update(mod.source(node).encode())
            h.update(b"\0")
    return CodeScope(roots, frozenset(symbols), tuple(sorted(files)), h.hexdigest()[:10], dict(walker.hashed))


def code_scope(roots: tuple[str, ...] | list[str], root: Path | None = None) -> CodeScope:
    """The :class:`CodeScope` of ``roots`` (``"pkg.mod:name"`` each) in the checkout ``root``
    (default :data:`SOURCE_ROOT`). Cached per process (the source of one run does not change) and
    on disk per source tree (:func:`tree_digest`), so a rerun does not parse the package again."""
    key, where = tuple(sorted(set(roots))), (root or SOURCE_ROOT).resolve()
    return _cached_scope(key, where)


@functools.lru_cache(maxsize=256)
def _cached_scope(roots: tuple[str, ...], root: Path) -> CodeScope:
    path, saved_all = _disk_entries(root)
    entry = "|".join(roots)
    saved = saved_all.get(entry)
    if saved:
        return CodeScope(roots, frozenset(map(tuple, saved["symbols"])), tuple(saved["files"]), saved["digest"],
                         {(a, b): (c, d) if c else None for a, b, c, d in saved["parents"]})
    scope = _scope(roots, root)
    if path is not None:
        saved_all[entry] = {"digest": scope.digest, "files": list(scope.files), "symbols": sorted(scope.symbols),
                            "parents": sorted([*k, *(v or ("", ""))] for k, v in scope.parents.items())}
        _save(path, saved_all)
    return scope


@functools.lru_cache(maxsize=8)
def _disk_entries(root: Path) -> tuple[Path | None, dict]:
    """The on-disk scope cache of this source tree (read once per process): its path and entries."""
    import json

    path = _disk_cache(root)
    try:
        return path, (json.loads(path.read_text()) if path is not None and path.is_file() else {})
    except (OSError, ValueError):
        return path, {}


def _save(path: Path, data: dict) -> None:
    import json
    import os
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".scope-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file
    except OSError:
        pass  # a cache only: an unwritable home directory costs a re-parse, nothing else


@functools.lru_cache(maxsize=8)
def tree_digest(root: Path) -> str:
    """Hash of every ``.py`` file of :data:`PACKAGES` under ``root`` (path and bytes): the key of the
    on-disk scope cache, so any edit anywhere (this module's rules included) recomputes scopes."""
    h = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:24]


def _disk_cache(root: Path) -> Path | None:
    import os

    base = os.environ.get("DP_CODE_SCOPE_CACHE")
    if base == "":
        return None  # DP_CODE_SCOPE_CACHE= (empty) turns the disk cache off
    base_dir = Path(base).expanduser() if base else Path.home() / ".cache" / "deepperception" / "code-scope"
    return base_dir / f"{tree_digest(root)}.json"


def cache_clear() -> None:
    """Forget parsed source and computed scopes (after editing source in a test)."""
    _cached_scope.cache_clear()
    _disk_entries.cache_clear()
    _scope.cache_clear()
    _graph.cache_clear()
    tree_digest.cache_clear()
    is_outside.cache_clear()


def function_root(fn) -> str | None:
    """The scope root of a callable: its module and the top-level name it is defined under
    (``evaluate_task.<locals>.produce`` -> ``tasks.evaluation:evaluate_task``); a Prefect task
    gives its function, a ``functools.partial`` its wrapped one. None outside this repository.

    >>> function_root(function_root)
    'deepperception.code_scope:function_root'
    >>> function_root(len) is None
    True
    """
    import inspect

    fn = getattr(fn, "fn", fn)  # a Prefect Task
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = inspect.unwrap(fn)
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module.split(".")[0] not in PACKAGES:
        return None
    top = qualname.split(".")[0]
    if top.startswith("<"):
        return None
    return f"{module}:{top}"


def task_root_on_stack(depth: int = 1) -> str | None:
    """The root of the innermost Prefect task (or flow) function of this repository on the calling
    thread's stack, e.g. ``tasks.training:train_sft_task`` while it runs a shared helper: the
    helper's ``produce`` alone would not say which trainer the task hands it. A frame counts when
    its module's global of the same name is a Prefect task/flow whose ``fn`` runs that code (a
    task's ``.fn`` called directly counts too). Found at run time, without importing Prefect."""
    import sys

    frame = sys._getframe(depth)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.split(".")[0] in PACKAGES:
            fn = getattr(frame.f_globals.get(frame.f_code.co_name), "fn", None)
            if getattr(fn, "__code__", None) is frame.f_code:
                return f"{module}:{frame.f_code.co_name}"
        frame = frame.f_back
    return None


def top_level_symbols(path: Path, lines: set[int], module: str) -> set[tuple[str, str]]:
    """The top-level symbols of the module at ``path`` whose *function bodies* contain one of ``lines``
    (line numbers executed, e.g. by ``coverage``); import-time lines (``def``/``class`` headers,
    constants) are not counted, they run whenever the module is imported by anyone."""
    return {(module, name) for names, body in _function_lines(path) if body & lines for name in names}


@functools.lru_cache(maxsize=512)
def _function_lines(path: Path) -> list[tuple[list[str], frozenset[int]]]:
    tops: list[tuple[ast.stmt, list[str]]] = []

    def collect(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            names = _binding_names(s)
            if names:
                tops.append((s, names))
            elif not isinstance(s, (ast.Import, ast.ImportFrom)):
                collect([c for c in ast.iter_child_nodes(s) if isinstance(c, ast.stmt)])

    collect(ast.parse(path.read_text(), str(path)).body)
    out = []
    for stmt, names in tops:
        body_lines: set[int] = set()
        for n in ast.walk(stmt):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                body = n.body if isinstance(n.body, list) else [n.body]
                body_lines.update(range(body[0].lineno, body[-1].end_lineno + 1))
        if body_lines:
            out.append((names, frozenset(body_lines)))
    return out


if __name__ == "__main__":  # pragma: no cover - a debugging aid: python -m deepperception.code_scope ROOT [MODULE]
    import sys

    scope = code_scope(tuple(sys.argv[1:2]))
    if len(sys.argv) > 2:
        print(" -> ".join(scope.why(sys.argv[2])) or f"{sys.argv[2]} is not in the scope")
    else:
        print(scope.digest)
        print("\n".join(scope.files))
