"""Scoped code versions: a stage's artifact version follows the code it runs, and only that."""

from deepperception.version import code_version, config_hash, module_closure


def test_data_engine_scope_excludes_training_and_evaluation():
    files = {p.as_posix() for p in module_closure(("deepperception.engine.labeling",))}
    assert any(f.endswith("deepperception/engine/labeling.py") for f in files)
    assert any(f.endswith("deepperception/eval/parsing.py") for f in files)  # imported inside a function
    assert any(f.endswith("deepperception/__init__.py") for f in files)  # package inits run too
    assert not any("/training/" in f or f.endswith("eval/inference.py") or f.endswith("report.py") for f in files)


def test_training_scope_follows_lazy_imports():
    files = {p.as_posix() for p in module_closure(("deepperception.training.rl_filter",))}
    assert any(f.endswith("deepperception/eval/inference.py") for f in files)
    assert any(f.endswith("deepperception/model/generation.py") for f in files)


def test_code_versions_are_stable_and_scope_specific():
    a = code_version(("deepperception.report",))
    assert a == code_version(("deepperception.report",))
    assert a != code_version(("deepperception.engine.collection",))
    assert code_version(("deepperception.report",), ("tasks.evaluation",)) != a
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
