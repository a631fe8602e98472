"""Partial reruns proven by counting, and code scopes checked against what stages really run.

ONE toy reproduction under ``coverage`` (a coverage context per stage, switched by a run_stage
listener) then four reruns into the same store. Which stages *executed* (computed a version
rather than reusing one) is counted from run_stage's ``end`` events, never inferred from timing:

* unchanged: none;
* an evaluation parameter (``evaluation.n_resamples``): the four evaluations and the report;
* the reward (``grpo.iou_threshold``, the IoU reward's threshold): the RL filter (it scores with GRPO's reward unless
  ``rl_filter.reward`` is set: config.py fills it, so its kept rows follow the reward GRPO trains
  on), GRPO, GRPO's evaluation and the report;
* the teacher prompt (``prompts.TEACHER_PROMPT_TEMPLATE``, a code edit: made in a copy of the
  source tree the code scopes are read from, and in the running module): CoT distillation and
  everything downstream, not mining, collection, labeling, composition, the bench or its
  contamination check.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from deepperception import code_scope as cs
from deepperception.store.stage import StageEvent, add_stage_listener, remove_stage_listener

pytestmark = pytest.mark.slow

REPO = cs.SOURCE_ROOT
DATA_ENGINE_UPSTREAM = {"mine", "collect", "label", "compose", "build-bench", "contamination", "build-grpo"}


class Recorder:
    """Collects run_stage events; with ``cov``, runs each stage body in a coverage context of its own
    (``produce`` to ``produced``: the store's planning and committing around it are not the stage's)."""

    def __init__(self, cov=None) -> None:
        self.cov = cov
        self.ends: list[StageEvent] = []
        self.contexts: dict[str, StageEvent] = {}
        self._starts: list[StageEvent] = []
        self._previous: list[str | None] = []

    def __call__(self, event: StageEvent) -> None:
        if event.phase == "start":
            self._starts.append(event)
        elif event.phase == "end":
            self._starts.pop()
            self.ends.append(event)
        elif self.cov is not None and event.phase == "produce":
            ctx = f"{len(self.contexts)}:{event.stage}:{event.name}"
            self.contexts[ctx] = self._starts[-1]  # its scope
            self._previous.append(self.cov.switch_context(ctx))
        elif self.cov is not None and event.phase == "produced":
            self.cov.switch_context(self._previous.pop() or "")

    def executed(self) -> Counter:
        return Counter(e.stage for e in self.ends if e.reused is False)


def _copy_sources(dst: Path) -> Path:
    for d in cs.PACKAGES:
        shutil.copytree(REPO / d, dst / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def _run(uri: str, recorder: Recorder, overrides: dict | None = None) -> dict:
    from flows.reproduce import reproduce

    add_stage_listener(recorder)
    try:
        return reproduce(profile="toy", overrides=overrides, store_uri=uri, dispatch="inline")
    finally:
        remove_stage_listener(recorder)


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory):
    if sys.gettrace() is not None:
        pytest.skip("another tracer (coverage, a debugger) is active: the scope check needs its own")
    import coverage

    tmp = tmp_path_factory.mktemp("partial-reruns")
    uri = str(tmp / "store")
    out: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        # Versions are computed from a frozen copy of the source (the teacher-prompt edit goes there).
        src = _copy_sources(tmp / "src")
        mp.setattr(cs, "SOURCE_ROOT", src)
        cs.cache_clear()
        cov = coverage.Coverage(data_file=None, source=[str(REPO / d) for d in cs.PACKAGES], branch=False)
        first = Recorder(cov)
        cov.start()
        try:
            out["first"] = _run(uri, first)
        finally:
            cov.stop()
        out["first_rec"], out["coverage"] = first, cov.get_data()

        for key, overrides in (("unchanged", None), ("evaluation", {"evaluation": {"n_resamples": 300}}),
                               ("reward", {"evaluation": {"n_resamples": 300},
                                           "grpo": {"iou_threshold": 0.7}})):
            rec = Recorder()
            out[key] = _run(uri, rec, overrides)
            out[f"{key}_rec"] = rec

        from deepperception import prompts

        extra = "\nNote that you MUST name the object's category first."
        edited = prompts.TEACHER_PROMPT_TEMPLATE + extra
        path = src / "deepperception" / "prompts.py"
        path.write_text(path.read_text() + f"\nTEACHER_PROMPT_TEMPLATE += {extra!r}\n")
        cs.cache_clear()
        mp.setattr(prompts, "TEACHER_PROMPT_TEMPLATE", edited)
        rec = Recorder()
        out["teacher"] = _run(uri, rec, {"evaluation": {"n_resamples": 300},
                                         "grpo": {"iou_threshold": 0.7}})
        out["teacher_rec"] = rec
        out["uri"], out["extra"], out["src"] = uri, extra, src
    cs.cache_clear()
    return out


def test_first_run_executes_every_stage(runs):
    executed = runs["first_rec"].executed()
    assert set(executed) >= DATA_ENGINE_UPSTREAM | {"distill", "filter", "build-sft", "base-model", "sft",
                                                     "rl-filter", "grpo", "evaluate", "report"}
    assert all(e.reused is False for e in runs["first_rec"].ends)


def test_unchanged_rerun_executes_nothing(runs):
    rec = runs["unchanged_rec"]
    assert rec.ends and rec.executed() == Counter()
    assert runs["unchanged"]["artifacts"] == runs["first"]["artifacts"]


def test_an_evaluation_parameter_reruns_the_evaluations_and_the_report_only(runs):
    n_evals = runs["first_rec"].executed()["evaluate"]
    assert runs["evaluation_rec"].executed() == Counter({"evaluate": n_evals, "report": 1})


def test_the_reward_reruns_rl_filter_grpo_and_grpos_evaluation_only(runs):
    rec = runs["reward_rec"]
    assert rec.executed() == Counter({"rl-filter": 1, "grpo": 1, "evaluate": 1, "report": 1})
    (evaluation,) = [e for e in rec.ends if e.stage == "evaluate" and e.reused is False]
    assert str(evaluation.upstream["checkpoint"]) == runs["reward"]["artifacts"]["grpo_checkpoint"]
    assert runs["reward"]["artifacts"]["sft_checkpoint"] == runs["evaluation"]["artifacts"]["sft_checkpoint"]


def test_the_teacher_prompt_reruns_distillation_and_downstream_not_the_data_engine_before_it(runs):
    executed = runs["teacher_rec"].executed()
    assert not set(executed) & DATA_ENGINE_UPSTREAM, executed
    assert set(executed) == {"distill", "filter", "build-sft", "data-card", "export", "base-model", "sft",
                             "rl-filter", "grpo", "evaluate", "report"}, executed
    # the prompt the distillation ran with is the edited one (the edit is real, not only in the hash)
    from deepperception.store import ArtifactRef, ArtifactStore, StoreSettings

    store = ArtifactStore(StoreSettings(uri=runs["uri"]))
    prompts = store.read_table(ArtifactRef.parse(runs["teacher"]["artifacts"]["cot"])).column("teacher_prompt")
    assert prompts.to_pylist() and all(runs["extra"] in p for p in prompts.to_pylist())


def test_every_function_a_stage_runs_is_in_its_code_scope(runs):
    """Each function body (of deepperception/, tasks/, flows/) that ran inside a stage's coverage
    context is a symbol of that stage's code scope, or kept out on purpose (OUTSIDE_VERSIONS)."""
    data, rec = runs["coverage"], runs["first_rec"]
    assert rec.contexts
    missing: dict[str, list[str]] = {}
    for ctx, event in rec.contexts.items():
        if event.scope is None:
            continue
        data.set_query_contexts([ctx])
        ran: set[tuple[str, str]] = set()
        for filename in data.measured_files():
            lines = set(data.lines(filename) or ())
            path = Path(filename)
            if not lines or REPO not in path.parents:
                continue
            rel = path.relative_to(REPO)
            module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            ran |= cs.top_level_symbols(runs["src"] / rel, lines, module)  # the source the run started from
        left_out = sorted(f"{m}:{n}" for m, n in ran - event.scope.symbols if not cs.is_outside(m, n))
        if left_out:
            missing[ctx] = left_out
    data.set_query_contexts(None)
    assert not missing, f"functions a stage ran that are not in its code scope: {missing}"
