"""Scoped code versions: a stage's artifact version follows the code it runs, and only that."""

import hashlib
from pathlib import Path

from deepperception import __version__, version
from deepperception.version import code_version, config_hash, module_closure


def test_data_engine_scope_excludes_training_and_evaluation():
    files = {p.as_posix() for p in module_closure(("deepperception.engine.labeling",))}
    assert any(f.endswith("deepperception/engine/labeling.py") for f in files)
    assert any(f.endswith("deepperception/eval/parsing.py") for f in files)  # imported inside a function
    assert any(f.endswith("deepperception/__init__.py") for f in files)  # package inits run too
    assert not any("/training/" in f or f.endswith("eval/inference.py") or f.endswith("report.py") for f in files)


def test_training_scope_follows_lazy_imports():
    files = {p.as_posix() for p in module_closure(("deepperception.training.rl_filter",))}
    assert any(f.endswith("deepperception/model/sampling.py") for f in files)  # the RL filter's sampler
    assert any(f.endswith("deepperception/model/generation.py") for f in files)


def _independent_hash(root: Path, files) -> str:
    """The documented recipe, written out here: sha256 over (relative path, NUL, bytes) in path order."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(str(Path(path).relative_to(root)).encode() + b"\0" + Path(path).read_bytes())
    return h.hexdigest()[:10]


def test_code_version_matches_an_independent_hash_of_its_closure():
    files = module_closure(("deepperception.report",))
    want = _independent_hash(version._ROOT, files)
    assert code_version(("deepperception.report",)) == f"{__version__}+src.{want}"
    assert code_version(("deepperception.engine.collection",)) != f"{__version__}+src.{want}"
    # a shallow task module is hashed too, without its imports
    shallow = _independent_hash(version._ROOT, set(files) | {version._ROOT / "tasks" / "evaluation.py"})
    assert code_version(("deepperception.report",), ("tasks.evaluation",)) == f"{__version__}+src.{shallow}"
    # the unscoped version covers every source file of the package, the tasks and the flows
    # (directory by directory, in this order, each sorted)
    h = hashlib.sha256()
    for d in ("deepperception", "tasks", "flows"):
        for p in sorted((version._ROOT / d).rglob("*.py")):
            h.update(str(p.relative_to(version._ROOT)).encode() + b"\0" + p.read_bytes())
    assert version.source_hash.__wrapped__() == h.hexdigest()[:10]


def test_scoped_hash_changes_with_the_code_it_runs_and_only_that(tmp_path, monkeypatch):
    pkg = tmp_path / "deepperception"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from deepperception.b import g\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    (pkg / "c.py").write_text("X = 1\n")
    monkeypatch.setattr(version, "_ROOT", tmp_path)
    scoped = version.scoped_source_hash.__wrapped__  # bypass the process-wide cache

    before = scoped(("deepperception.a",))
    assert before == _independent_hash(tmp_path, [pkg / "__init__.py", pkg / "a.py", pkg / "b.py"])
    (pkg / "c.py").write_text("X = 2\n")  # not imported by a: same version
    assert scoped(("deepperception.a",)) == before
    (pkg / "b.py").write_text("def g():\n    return 2\n")  # imported lazily by a: new version
    after = scoped(("deepperception.a",))
    assert after != before
    assert after == _independent_hash(tmp_path, [pkg / "__init__.py", pkg / "a.py", pkg / "b.py"])


def test_config_hash_ignores_key_order_but_not_values():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1, "b": [1, 2]}) != config_hash({"a": 1, "b": [2, 1]})
    want = hashlib.sha256(b'{"a":1,"b":[1,2]}').hexdigest()[:16]
    assert config_hash({"b": [1, 2], "a": 1}) == want
    assert config_hash(None) == hashlib.sha256(b"{}").hexdigest()[:16]
