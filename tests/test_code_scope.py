"""A stage's code version is derived from what its task function reaches, symbol by symbol:
editing what a stage runs gives it a new version, editing anything else (the evaluator, for an
SFT checkpoint) does not. The coverage check of the same rule is tests/flows/test_partial_reruns.py."""

import ast
import shutil
import textwrap
from pathlib import Path

import pytest

from deepperception import code_scope as cs
from deepperception.store.stage import StageEvent, add_stage_listener, remove_stage_listener, run_stage
from deepperception.version import stage_code_version

REPO = cs.SOURCE_ROOT
EVAL = ("tasks.evaluation:evaluate_task",)
SFT = ("tasks.training:train_sft_task", "tasks.training:_run_training_stage")  # what run_stage derives for SFT
MINE = ("tasks.engine:mine_entities_task",)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return tmp_path


TOY = {
    "deepperception/__init__.py": "",
    "deepperception/hub.py": """
        from deepperception.a import A_CONST
        from deepperception.b import unused_by_task
        """,
    "deepperception/a.py": """
        A_CONST = 1

        def helper():
            from .c import deep
            return deep()

        def other():
            return 2
        """,
    "deepperception/b.py": """
        def unused_by_task():
            return 0
        """,
    "deepperception/c.py": """
        import deepperception.d as d

        def deep():
            return d.leaf()
        """,
    "deepperception/d.py": """
        def leaf():
            return 1

        def not_called():
            return 2
        """,
    "deepperception/runner.py": """
        def main():
            from deepperception.b import unused_by_task
            return unused_by_task()

        if __name__ == "__main__":
            main()
        """,
    "tasks/__init__.py": "",
    "tasks/t.py": """
        from deepperception import a
        from deepperception.hub import A_CONST

        def task_fn():
            def produce(w):
                return a.helper() + A_CONST
            return produce

        def spawn():
            return ["python", "-m", "deepperception.runner"]
        """,
}


def test_reach_follows_names_attributes_and_lazy_relative_imports_not_whole_modules(tmp_path):
    root = _tree(tmp_path, TOY)
    scope = cs.code_scope(("tasks.t:task_fn",), root)
    syms = set(scope.symbols)
    assert {("tasks.t", "task_fn"), ("deepperception.a", "helper"), ("deepperception.c", "deep"),
            ("deepperception.d", "leaf"), ("deepperception.a", "A_CONST")} <= syms
    # a hub module's other imports, a module's other functions and a module never used: not reached
    assert not {("deepperception.a", "other"), ("deepperception.d", "not_called"),
                ("deepperception.b", "unused_by_task"), ("tasks.t", "spawn")} & syms
    assert "deepperception/b.py" not in scope.files and "deepperception/d.py" in scope.files
    assert scope.why("deepperception.d", "leaf") == [  # import lines are symbols too (they are hashed)
        "tasks.t:task_fn", "tasks.t:a", "deepperception.a:helper", "deepperception.c:deep", "deepperception.c:d",
        "deepperception.d:leaf"]


def test_a_module_named_in_a_string_reaches_its_main_block(tmp_path):
    root = _tree(tmp_path, TOY)
    scope = cs.code_scope(("tasks.t:spawn",), root)  # python -m deepperception.runner
    assert ("deepperception.runner", "main") in scope.symbols
    assert ("deepperception.b", "unused_by_task") in scope.symbols


def test_digest_changes_with_a_reached_symbol_only(tmp_path):
    root = _tree(tmp_path, TOY)
    before = cs.code_scope(("tasks.t:task_fn",), root).digest
    d = root / "deepperception" / "d.py"
    d.write_text(d.read_text().replace("return 2", "return 3"))  # not_called: not reached
    (root / "deepperception" / "b.py").write_text("def unused_by_task():\n    return 5\n")
    cs.cache_clear()
    assert cs.code_scope(("tasks.t:task_fn",), root).digest == before
    d.write_text(d.read_text().replace("return 1", "return 4"))  # leaf: reached lazily, three hops away
    cs.cache_clear()
    assert cs.code_scope(("tasks.t:task_fn",), root).digest != before


def test_a_module_used_bare_is_taken_whole_and_outside_code_is_left_out(tmp_path):
    root = _tree(tmp_path, {**TOY, "tasks/u.py": """
        from deepperception import d
        from deepperception.store import put

        def task_fn():
            put(1)
            return run(d)
        """, "deepperception/store/__init__.py": "def put(x):\n    return x\n"})
    scope = cs.code_scope(("tasks.u:task_fn",), root)
    assert {("deepperception.d", "leaf"), ("deepperception.d", "not_called")} <= scope.symbols
    assert not any(m.startswith("deepperception.store") for m, _ in scope.symbols)  # OUTSIDE_VERSIONS


def test_a_root_that_is_not_a_top_level_name_is_refused(tmp_path):
    root = _tree(tmp_path, TOY)
    with pytest.raises(ValueError, match="tasks.t:nope"):
        cs.code_scope(("tasks.t:nope",), root)
    with pytest.raises(ValueError, match="package.module:top_level_name"):
        cs.code_scope(("tasks.t",), root)


def _edit_functions(path: Path, names: set[str]) -> None:
    """Append a statement to each named top-level function (an edit that changes what it runs)."""
    lines = path.read_text().splitlines(keepends=True)
    nodes = [n for n in ast.parse("".join(lines)).body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {n.name for n in nodes} == names, f"{path.name} no longer defines {names - {n.name for n in nodes}}"
    for n in sorted(nodes, key=lambda n: -n.end_lineno):
        last = n.body[-1]
        lines.insert(last.end_lineno, " " * last.col_offset + "_edited = None  # noqa\n")
    path.write_text("".join(lines))
    ast.parse(path.read_text())


def _copy_repo(dst: Path) -> Path:
    for d in cs.PACKAGES:
        shutil.copytree(REPO / d, dst / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "profiles"))
    return dst


def test_editing_the_evaluator_changes_the_evaluation_version_and_not_sft_or_mining(tmp_path):
    root = _copy_repo(tmp_path)
    before = {k: cs.code_scope(r, root).digest for k, r in (("eval", EVAL), ("sft", SFT), ("mine", MINE))}
    # the evaluator's parser and its output reader (eval/io.py is what the old hand list left out)
    _edit_functions(root / "deepperception/eval/parsing.py", {"official_parse", "answer_spans", "is_inside_answer"})
    _edit_functions(root / "deepperception/eval/io.py", {"read_outputs"})
    cs.cache_clear()
    after = {k: cs.code_scope(r, root).digest for k, r in (("eval", EVAL), ("sft", SFT), ("mine", MINE))}
    assert after["eval"] != before["eval"]
    assert after["sft"] == before["sft"]
    assert after["mine"] == before["mine"]


def test_sft_reaches_the_parser_only_through_its_box_check():
    """SFT's pre-flight refuses a row without a box the released parser reads (preflight.require_box
    -> parsing.grpo_bbox): that part of parsing.py is code SFT runs, so it is in SFT's version."""
    scope = cs.code_scope(SFT)
    parsing = {n for m, n in scope.symbols if m == "deepperception.eval.parsing"}
    assert "grpo_bbox" in parsing and not {"official_parse", "answer_spans"} & parsing
    assert scope.why("deepperception.eval.parsing", "grpo_bbox")[-3:] == [
        "deepperception.training.sft:require_box", "deepperception.training.preflight:require_box",
        "deepperception.eval.parsing:grpo_bbox"]


def test_sft_does_not_reach_grpo_or_its_rewards():
    """launch.py trains through the stage config (``cfg.train``): the SFT task reaches train_sft through
    its ``SFTStageConfig`` parameter and nothing of GRPO (it used to: launch._train named both)."""
    scope = cs.code_scope(SFT)
    assert ("deepperception.training.grpo", "train_grpo") not in scope.symbols, scope.why(
        "deepperception.training.grpo", "train_grpo")
    assert not {n for m, n in scope.symbols if m == "deepperception.training.rewards"} - {"completion_text", "<side>"}


@pytest.fixture
def lstore(tmp_path):
    from deepperception.store import ArtifactStore, StoreSettings

    return ArtifactStore(StoreSettings(uri=str(tmp_path / "store")))


def _table(w):
    import pyarrow as pa

    w.write_table(pa.table({"x": [1]}))
    return {}


def test_run_stage_versions_with_the_task_root_and_tells_listeners(lstore):
    events: list[StageEvent] = []
    add_stage_listener(events.append)
    add_stage_listener(lambda e: 1 / 0)  # a broken listener never fails the stage
    try:
        ref, reused = run_stage(lstore, "t", "filter", {"k": 1}, {}, _table, task="tasks.engine:filter_cot_task")
        again, reused_again = run_stage(lstore, "t", "filter", {"k": 1}, {}, _table, task="tasks.engine:filter_cot_task")
        with pytest.raises(RuntimeError):
            run_stage(lstore, "t2", "filter", {"k": 1}, {}, lambda w: (_ for _ in ()).throw(RuntimeError("x")),
                      task="tasks.engine:filter_cot_task")
    finally:
        remove_stage_listener(events.append)
        from deepperception.store import stage as stage_mod

        stage_mod._listeners.clear()
    assert (reused, again, reused_again) == (False, ref, True)
    want = stage_code_version(("tasks.engine:filter_cot_task",))
    assert lstore.manifest(ref).code_version == want
    assert [(e.phase, e.reused) for e in events] == [
        ("start", None), ("produce", None), ("produced", None), ("end", False),  # computed
        ("start", None), ("end", True),  # reused: the body never ran
        ("start", None), ("produce", None), ("produced", None), ("end", None)]  # failed
    assert events[3].ref == ref and ("tasks.engine", "filter_cot_task") in events[3].scope.symbols
