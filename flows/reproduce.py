"""The full DeepPerception reproduction as one Prefect flow that only composes stage flows.

    data engine ─┬─ mine → collect → label ─┬─ compose(train) → distill → filter → SFT rows ─┐
                 │                          │        └─ contamination ───────→ GRPO pool ────┤
                 │                          └─ compose(test) → bench ─┘  data card, exports  │
    training     └─ base model ─┬─ CoT-SFT → RL filter → GRPO ←─────────────────────────────┘
                                └─ direct-SFT (comparison.direct_sft: same SFT rows, answer only)
    extra benches   KVG-Bench parquet / s3:// / name@version → import-bench (content-hashed)
    evaluation      {base × each prompt mode, direct-SFT, CoT-SFT, GRPO} × {bench, extra benches}
                    → report (arms side by side + paired-bootstrap differences, per bench)
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from deepperception import comparison as cmp
from deepperception.config import ReproductionConfig, load_profile
from deepperception.progress import Tracker, progress
from deepperception.pipeline_stages import GPU_DEPLOYMENTS, STAGES, Stage  # GPU stages -> their `gpu` pool deployments
from flows import stages
from flows.dispatch import run_stage_deployment
from flows.params import Dispatch, ParameterError, ProfileName, described, ref_text, resolve_dispatch
from tasks.common import run_logger
from tasks.evaluation import resolve_bench_task
from tasks.reporting import publish_run_artifacts




class _Counted:
    """A stage flow whose every run (here or on a pool) advances the parent run's progress
    artifact, ``progress-reproduce``: stage runs done of :func:`planned_stage_runs`."""

    def __init__(self, stage_flow, tracker: Tracker):
        self.flow, self.name, self.tracker = stage_flow, stage_flow.name, tracker

    def done(self, value):
        self.tracker.advance()
        return value

    def __call__(self, *args, **kwargs):
        return self.done(self.flow(*args, **kwargs))


class _CountedStages:
    """``flows.stages`` as the composition below calls it, each stage flow :class:`_Counted`."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def __getattr__(self, name: str) -> _Counted:
        return _Counted(getattr(stages, name), self.tracker)


def planned_stage_runs(cfg: ReproductionConfig) -> int:
    """How many stage flow runs :func:`run_reproduction` makes for ``cfg``: the 17 of every run
    (two compositions), the direct-SFT arm when on, and one evaluation per arm and bench."""
    direct = 1 if cfg.comparison.direct_sft else 0
    arms = len(cfg.comparison.base_prompt_modes) + direct + 2  # + CoT-SFT, GRPO
    return 17 + direct + arms * (1 + len(cfg.comparison.extra_benches))


def _gpu_stage(stage_flow: _Counted, dispatch: str, **params):
    """Run a GPU stage in this process, or on the `gpu` work pool through its deployment
    (references sent as ``name@version`` strings, what the deployments' schemas take)."""
    if dispatch == "inline":
        return stage_flow(**params)
    store_uri = params.pop("store_uri")
    return stage_flow.done(run_stage_deployment(GPU_DEPLOYMENTS[stage_flow.name], ref_text(params),
                                                store_uri=store_uri))


def _run_name() -> str:
    """``reproduce[toy]``, ``reproduce[paper +overrides 1a2b3c4d]``, ``reproduce[mine.yaml]``."""
    from pathlib import Path

    from prefect.context import FlowRunContext

    from deepperception.version import short_hash

    ctx = FlowRunContext.get()
    params = dict(ctx.parameters or {}) if ctx else {}
    what = Path(params["profile_file"]).name if params.get("profile_file") else str(params.get("profile", "demo"))
    if params.get("overrides"):
        what += f" +overrides {short_hash(params['overrides'], 8)}"
    return f"reproduce[{what}]"


@flow(name="reproduce", log_prints=True, flow_run_name=_run_name)
@described(
    profile="The settings to start from: a profile shipped in deepperception/profiles (`deepperception "
            "profiles` lists them with what each is for).",
    overrides='Settings deep-merged onto the profile, e.g. {"grpo": {"beta": 0.02}} (only what differs).',
    profile_file="Instead of a shipped profile: the path of a YAML profile file on the worker (it may "
                 "`extends:` a shipped one).",
    force_stages="Recompute these stages even if unchanged (and hence what depends on them).",
    dispatch="Where SFT, RL filtering, GRPO and evaluation run: deployments = on the `gpu` work pool; "
             "inline = in this run's process; auto = deployments when a `gpu` pool with those deployments exists.",
)
def reproduce(
    profile: ProfileName = "demo",
    overrides: dict[str, Any] | None = None,
    profile_file: str | None = None,
    store_uri: str | None = None,
    force_stages: list[Stage] | None = None,
    dispatch: Dispatch = "auto",
) -> dict:
    """Run every stage in order; each reuses its committed version when nothing it depends on
    changed, so a rerun after editing one stage's config recomputes only that stage and below.

    The settings (profile + overrides) are validated in full before any stage runs.
    """
    cfg = load_profile(profile_file or profile, overrides, source="the overrides parameter")
    mode = resolve_dispatch(dispatch, GPU_DEPLOYMENTS.values())
    run_logger().info("dispatch=%s: GPU stages run %s", dispatch,
                      "on the gpu pool's deployments" if mode == "deployments" else "in this process")
    result = run_reproduction(cfg, store_uri, force_stages, mode)
    publish_run_artifacts(result, store_uri=store_uri)  # report, metrics and version index on this run
    return result


def run_reproduction(cfg: ReproductionConfig, store_uri: str | None = None,
                     force_stages: list[str] | None = None, dispatch: str = "inline") -> dict:
    """The reproduction for a validated config: what :func:`reproduce` runs, callable from code
    and tests that build a config themselves (inside a flow the stages are its subflows; outside
    one each stage flow is a run of its own). ``dispatch`` is ``inline`` or ``deployments``."""
    force = set(force_stages or [])
    unknown = force - set(STAGES)
    if unknown:
        raise ParameterError(f"parameter 'force_stages': unknown stages {sorted(unknown)}; known: {list(STAGES)}")
    if dispatch not in ("inline", "deployments"):
        raise ParameterError(f"parameter 'dispatch': {dispatch!r} is not inline or deployments")
    logger = run_logger()
    uri = store_uri
    f = lambda name: name in force  # noqa: E731
    with progress("reproduce", total=planned_stage_runs(cfg), unit="stage runs", min_interval=0) as tracker:
        result = _compose(cfg, uri, f, dispatch, _CountedStages(tracker), logger)
    return result


def _compose(cfg: ReproductionConfig, uri: str | None, f, dispatch: str, st: _CountedStages, logger) -> dict:
    """The stages in order (``st``: the stage flows, counted); what :func:`run_reproduction` runs."""

    entities = st.mine_entities(cfg.data, uri, f("mine"), cfg.knowledge)
    images = st.collect_images(cfg.data, cfg.collection, entities, uri, f("collect"), cfg.sharding)
    labeled = st.label_boxes(cfg.labeling, images, uri, f("label"), cfg.runner)
    train_composites = st.compose_images(cfg.compose_train, labeled, uri, f("compose"), cfg.sharding, cfg.runner)
    bench_composites = st.compose_images(cfg.compose_bench, labeled, uri, f("compose"), cfg.sharding, cfg.runner)
    bench = st.build_bench(cfg.datasets, bench_composites, uri, f("bench"))
    # Extra benches are imported before any training, so a bad file fails the run at once.
    extra = {b.name: resolve_bench_task(b.source, uri) for b in cfg.comparison.extra_benches}
    cot = st.distill_cot(cfg.distillation, train_composites, entities, uri, f("distill"), cfg.runner)
    kept = st.filter_cot(cfg.filtering, cot, uri, f("filter"))
    clean = st.check_contamination(cfg.contamination, bench, bench_composites, labeled, train_composites, uri,
                                       f("contamination"))
    data = st.build_training_data(cfg.datasets, kept, train_composites, uri, f("training-data"), clean)
    card = st.write_data_card({"images": images, "labeled": labeled, "composites": train_composites, "cot": cot,
                                   "cot_filtered": kept, "sft_dataset": data["sft_dataset"],
                                   "grpo_pool": data["grpo_pool"], "bench": bench, "contamination": clean},
                                  uri, f("data-card"))
    exported = st.export_datasets(data["sft_dataset"], data["grpo_pool"], uri, f("export"))

    base = st.build_base_model(cfg.base_model, data["sft_dataset"], data["grpo_pool"], uri, f("base-model"))
    sft = _gpu_stage(st.train_sft, dispatch, config=cfg.sft, base=base, dataset=data["sft_dataset"],
                     store_uri=uri, force=f("sft"), launch=cfg.launch)
    # The paper's ablation: the same rows and base, answer-only targets (a version of its own).
    direct = (_gpu_stage(st.train_sft, dispatch, config=cfg.sft.model_copy(update={"target": "direct"}),
                         base=base, dataset=data["sft_dataset"], store_uri=uri, force=f("sft"), launch=cfg.launch)
              if cfg.comparison.direct_sft else None)
    grpo_data = _gpu_stage(st.rl_filter, dispatch, config=cfg.rl_filter, checkpoint=sft,
                           pool=data["grpo_pool"], store_uri=uri, force=f("rl-filter"), runner=cfg.runner)
    grpo = _gpu_stage(st.train_grpo, dispatch, config=cfg.grpo, checkpoint=sft, dataset=grpo_data,
                      store_uri=uri, force=f("grpo"), launch=cfg.launch)

    # Arms: the base once per prompt mode (baseline = the raw question, as the official eval.sh
    # scores base models), then the trained checkpoints in the configured prompt mode.
    arms = [(cmp.base_label(m), base,
             cfg.evaluation.model_copy(update=cmp.base_eval_update(m, cfg.comparison.baseline_max_new_tokens)))
            for m in cfg.comparison.base_prompt_modes]
    arms += [(label, ckpt, cfg.evaluation) for label, ckpt in
             ((cmp.DIRECT_SFT, direct), (cmp.COT_SFT, sft), (cmp.GRPO, grpo)) if ckpt is not None]
    # Benches: the composed one (categories from its manifest) and the extra ones (official
    # KVG-Bench categories unless the entry names its own).
    benches = [(cmp.COMPOSED_BENCH, bench, None, None)]
    benches += [(b.name, extra[b.name], b.seen_categories, b.all_categories) for b in cfg.comparison.extra_benches]
    evaluations = {
        cmp.artifact_key(label, name): _gpu_stage(
            st.evaluate_checkpoint, dispatch, config=ecfg, label=label, checkpoint=ckpt, bench=bref,
            seen_categories=seen, all_categories=cats, store_uri=uri, force=f("evaluate"))
        for name, bref, seen, cats in benches for label, ckpt, ecfg in arms
    }
    header = {"profile": cfg.profile, "bench": str(bench), "train data": str(data["sft_dataset"]),
              "grpo data": str(grpo_data), "extra benches": {k: str(v) for k, v in extra.items()},
              "paired bootstrap": {"n_resamples": cfg.comparison.n_resamples, "seed": cfg.comparison.seed}}
    report = st.write_report(evaluations, header, uri, f("report"))
    logger.info("report: %s", report["report_markdown"])
    return {
        "report": report["report"], "report_markdown": report["report_markdown"],
        "report_json": report["report_json"],
        "artifacts": {
            "entities": str(entities), "images": str(images), "labeled": str(labeled),
            "composites_train": str(train_composites), "composites_bench": str(bench_composites),
            "bench": str(bench), "cot": str(cot), "cot_filtered": str(kept),
            "sft_dataset": str(data["sft_dataset"]), "grpo_pool": str(data["grpo_pool"]),
            "contamination": str(clean), "data_card": str(card), "exports": str(exported),
            "base_checkpoint": str(base), "sft_checkpoint": str(sft), "grpo_dataset": str(grpo_data),
            "grpo_checkpoint": str(grpo),
            **({"direct_sft_checkpoint": str(direct)} if direct is not None else {}),
            **{f"bench_{name.replace('-', '_')}": str(ref) for name, ref in extra.items()},
            **{k: str(v) for k, v in evaluations.items()},
        },
    }



if __name__ == "__main__":
    reproduce()
