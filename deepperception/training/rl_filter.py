"""RL data filtering between the stages (paper §data engine step 5, official-code.md §4.1).

The stage-1 model answers each GRPO item ``n_samples`` times (sampled). What makes an answer
*correct* is a setting (``RLFilterConfig.correct``):

* ``"eval"`` (default, as the paper says): the official KVG-Bench parser
  (:func:`~deepperception.eval.parsing.official_bbox`, run over the whole output) gives a box with
  IoU >= 0.5 against the GT box in ``solution``.
* ``"reward"``: GRPO's own box reward (:func:`~deepperception.training.rewards.make_reward_funcs`
  on the run's :class:`~deepperception.training.rewards.RewardConfig`; released: IoU of the first
  ``<answer>`` past 0.8) is > 0.

Items answered correctly ``keep_min..keep_max`` times are kept (paper: 1-3 of 4; always-right and
never-right items carry no GRPO signal, since every group advantage would be 0).

The two rules disagree (an answer at IoU 0.6 is correct for ``eval`` but earns no box reward at
threshold 0.8), so every run measures what each buys: the ``n_samples`` answers of an item are
scored with GRPO's *full* reward (box + format) as one group of G = ``n_samples``, and a group
whose rewards all agree (std 0, TRL's ``frac_reward_zero_std``) gives GRPO no gradient. The stats
(:func:`zero_advantage_stats`) give that fraction for the whole pool and for the items each rule
would keep.

``on_empty`` is the explicit, recorded policy for when nothing survives (the tiny random-weight model
is never correct): ``"error"`` raises :class:`RLFilterEmptyError`; ``"keep_all"`` returns every item
and says so in ``stats["policy_applied"]``.

The filter is two steps so a large pool runs shard by shard: :func:`score` (sampling, the costly
part; one shard per part of the pool table, :func:`rl_score_shard`, each committed on its own so a
killed stage resumes) and the selection (:func:`decide_policy` over the histogram of *all* shards,
then :func:`keep_mask` per shard). :func:`rl_filter` is both steps on one in-memory table.

Shard ``i`` samples with seed ``seed + (batches in parts 0..i-1)`` (:func:`shard_seeds`), so every
batch of the pool gets the seed it would get in one unsharded run: a one-part pool gives exactly
:func:`rl_filter`'s result, and so do parts whose sizes are multiples of ``batch_size``. Within a
process the loaded stage-1 model is cached (:func:`cached_model`) and sampling is serialised
(torch's seeded RNG is process-global), so N shards on threads load the checkpoint once.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from deepperception.boxes import box_iou, parse_gt_box
from deepperception.tables import require_columns
from deepperception.determinism import DeterminismConfig, apply_determinism
from deepperception.errors import ArtifactError, ConfigError, InputDataError, PipelineError
from deepperception.eval.parsing import official_bbox
from deepperception.training.rewards import RewardConfig, make_reward_funcs

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # pragma: no cover
    from deepperception.engine.sharding import ShardJob

log = logging.getLogger(__name__)

OnEmpty = Literal["error", "keep_all"]
CorrectRule = Literal["eval", "reward"]
RULES: tuple[str, ...] = ("eval", "reward")
CORRECT_IOU = 0.5
SHARD_UNIT = "rl-score"
"""Shard unit of the RL filter stage (``_shards/rl-score/`` of the grpo-dataset version)."""
SCORED_TABLE = "scored"
"""Every pool row with ``n_correct`` and ``sample_ious``, one part per shard (kept rows go to ``data``)."""


class RLFilterConfig(BaseModel):
    """Stage-2 data filtering (paper §3.3): the stage-1 model samples ``n_samples`` answers per
    item; items it gets right ``keep_min..keep_max`` times are kept."""

    model_config = ConfigDict(extra="forbid")

    n_samples: int = Field(4, ge=1)
    keep_min: int = Field(1, ge=0)
    keep_max: int = Field(3, ge=0)
    temperature: float | None = Field(
        None, gt=0, description="Sampling temperature. None: GRPO's rollout temperature (filled in by the "
        "reproduction config, so the filter samples as GRPO will).")
    top_k: int | None = Field(None, ge=0, description="Sampling top-k (0 = off). None: GRPO's rollout top_k.")
    top_p: float | None = Field(None, gt=0, le=1, description="Sampling top-p. None: GRPO's rollout top_p.")
    correct: Literal["eval", "reward"] = Field(
        "eval", description="What counts as a correct sample: eval = the lenient KVG-Bench rule (IoU >= 0.5 over "
        "the whole output, as the paper says); reward = GRPO's own box reward > 0 (a kept item's samples then differ "
        "in box reward, so its GRPO group carries signal); stats.zero_advantage compares both rules.")
    reward: RewardConfig | None = Field(
        None, description="GRPO's reward settings (iou_kind, iou_threshold, format_mode) for correct='reward' and "
        "the zero-advantage stats. None: the released defaults (a reproduction config fills it from grpo).")
    max_new_tokens: int = Field(512, ge=1)
    batch_size: int = Field(8, ge=1)
    device: str = Field("cpu", description="Where the stage-1 model samples (cuda on GPU workers).")
    on_empty: Literal["error", "keep_all"] = Field(
        "error", description="What to do when no item survives: fail, or keep every item (recorded in the manifest)."
    )
    seed: int = 0
    determinism: DeterminismConfig = Field(
        default_factory=DeterminismConfig, description="Thread count, deterministic kernels and seeding of this "
        "stage's process (part of its version: another thread count is another computation).")

    def sampling(self) -> dict[str, Any]:
        """``temperature`` / ``top_k`` / ``top_p`` to sample with; an unset one takes GRPO's default
        (a reproduction config fills them from its ``grpo`` section first).

        >>> RLFilterConfig(top_k=5).sampling()
        {'temperature': 1.0, 'top_k': 5, 'top_p': 1.0}
        """
        from deepperception.training.grpo import GRPOStageConfig

        fields = GRPOStageConfig.model_fields
        return {k: v if (v := getattr(self, k)) is not None else fields[k].default
                for k in ("temperature", "top_k", "top_p")}

    def reward_config(self) -> RewardConfig:
        """The reward the filter scores with: ``reward``, or the released defaults when unset.

        >>> RLFilterConfig().reward_config().iou_threshold
        0.8
        """
        return self.reward or RewardConfig()

    @model_validator(mode="after")
    def _check_range(self) -> "RLFilterConfig":
        if not self.keep_min <= self.keep_max <= self.n_samples:
            raise ValueError(
                f"rl_filter needs keep_min ({self.keep_min}) <= keep_max ({self.keep_max}) <= n_samples ({self.n_samples})")
        return self


class RLFilterEmptyError(PipelineError):
    """No item survived RL filtering and ``on_empty="error"``."""


def answer_iou(text: str, gt: tuple[float, float, float, float] | list[float]) -> float:
    """IoU of the official parser's box in ``text`` against ``gt`` (NaN -> 0).

    >>> answer_iou("<answer>(0,0),(10,10)</answer>", (0, 0, 10, 10))
    1.0
    >>> answer_iou("no box", (0, 0, 10, 10))
    0.0
    """
    pred, _ = official_bbox(text)
    iou = box_iou(pred, gt)
    return 0.0 if math.isnan(iou) else max(0.0, float(iou))


def count_correct(samples: list[str], gt, threshold: float = CORRECT_IOU) -> tuple[int, list[float]]:
    """``(number of samples with IoU >= threshold, their IoUs)``.

    >>> count_correct(["<answer>(0,0),(10,10)</answer>", "x", "(0,0),(10,5)"], (0, 0, 10, 10))
    (2, [1.0, 0.0, 0.5])
    """
    ious = [answer_iou(s, gt) for s in samples]
    return sum(i >= threshold for i in ious), ious


def grpo_rewards(samples: list[str], solution: str, reward: RewardConfig | None = None) -> tuple[list[float], list[float]]:
    """``(box rewards, full rewards)`` GRPO gives ``samples`` for ``solution``: the box reward of
    :func:`~deepperception.training.rewards.make_reward_funcs` and its sum with the format reward
    (TRL sums the reward functions, weight 1 each).

    >>> sol = "<|box_start|>(0,0),(100,100)<|box_end|>"
    >>> grpo_rewards(["<think>t</think><answer>(0,0),(100,100)</answer>", "<answer>(0,0),(100,60)</answer>"], sol)
    ([1.0, 0.0], [1.5, 0.0])
    """
    box_fn, fmt_fn = make_reward_funcs(reward)
    sols = [solution] * len(samples)
    box = [float(v) for v in box_fn(samples, sols)]
    return box, [b + float(f) for b, f in zip(box, fmt_fn(samples, sols))]


def zero_std(rewards: list[float]) -> bool | None:
    """Whether a group's rewards have zero std, as TRL tests it (``isclose(std, 0)`` on the float32
    rewards, unbiased std): such a group has advantage 0 for every sample, so no gradient. ``None``
    for a group of one (GRPO needs G >= 2).

    >>> zero_std([0.5, 0.5, 0.5]), zero_std([0.5, 1.5]), zero_std([1.0])
    (True, False, None)
    """
    import numpy as np

    if len(rewards) < 2:
        return None
    return bool(np.isclose(np.std(np.asarray(rewards, np.float32), ddof=1), 0.0, rtol=1e-5, atol=1e-8))



def check_params(n_samples: int, keep_min: int, keep_max: int, on_empty: str) -> None:
    """Refuse a keep range or ``on_empty`` policy the filter cannot apply.

    >>> check_params(4, 1, 3, "error")
    >>> check_params(4, 3, 1, "error")
    Traceback (most recent call last):
    ...
    deepperception.errors.ConfigError: need 0 <= keep_min (3) <= keep_max (1) <= n_samples (4)
    """
    if not 0 <= keep_min <= keep_max <= n_samples:
        raise ConfigError(f"need 0 <= keep_min ({keep_min}) <= keep_max ({keep_max}) <= n_samples ({n_samples})")
    if on_empty not in ("error", "keep_all"):
        raise ConfigError(f"on_empty must be 'error' or 'keep_all', got {on_empty!r}")


Sampler = Callable[..., dict[str, list[str]]]
"""``sampler(table, ckpt_dir, n=, temperature=, max_new_tokens=, seed=, batch_size=, top_k=, top_p=,
device=) -> {question_id: [answer, ...]}`` (the signature of ``model.sampling.sample_answers``)."""


def score(
    grpo_rows,
    ckpt_dir: str | Path | None,
    n_samples: int = 4,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    samples: dict[str, list[str]] | None = None,
    sampler: Sampler | None = None,
    allow_empty: bool = False,
    correct: CorrectRule = "eval",
    reward: RewardConfig | None = None,
):
    """Every input row (input order) with ``n_correct`` (int32, under the ``correct`` rule) and
    ``sample_ious`` (list<float32>, the eval IoUs), and, for the comparison of the two rules,
    ``n_correct_eval`` / ``n_correct_reward`` (int32), ``sample_rewards`` (list<float32>: GRPO's
    full reward per sample under ``reward``, released defaults when None) and ``zero_std`` (bool,
    null for one sample: the samples as one GRPO group give no gradient).

    ``samples`` (qid -> answers) skips sampling; otherwise ``sampler`` (default
    :func:`deepperception.model.sampling.sample_answers`) samples ``ckpt_dir``. GT boxes are checked
    before anything is sampled, so a bad row fails in seconds, named.
    """
    import pyarrow as pa

    if correct not in RULES:
        raise ConfigError(f"correct must be one of {list(RULES)}, got {correct!r}")
    table = grpo_rows if isinstance(grpo_rows, pa.Table) else pa.Table.from_pylist(list(grpo_rows))
    # No item in, nothing to keep: say so instead of committing an empty GRPO dataset.
    require_columns(table, ("question_id", "solution"), stage="rl_filter", allow_empty=allow_empty)
    qids = table.column("question_id").to_pylist()
    sols = table.column("solution").to_pylist()
    gts = []
    for q, s in zip(qids, sols):
        gt = parse_gt_box(s or "")
        if gt is None:
            raise InputDataError("solution has no <|box_start|>(x1,y1),(x2,y2)<|box_end|>", stage="rl_filter", row=q,
                                 field="solution")
        gts.append(gt)
    if samples is None and table.num_rows:
        if ckpt_dir is None:
            raise ConfigError("rl_filter needs ckpt_dir or precomputed samples")
        if sampler is None:
            from deepperception.model import sampling
            sampler = sampling.sample_answers
        samples = sampler(table, ckpt_dir, n=n_samples, temperature=temperature, max_new_tokens=max_new_tokens,
                          seed=seed, batch_size=batch_size, top_k=top_k, top_p=top_p, device=device)
    cols: dict[str, list] = {"n_correct_eval": [], "n_correct_reward": [], "sample_ious": [], "sample_rewards": [],
                             "zero_std": []}
    for q, gt, sol in zip(qids, gts, sols):
        got = (samples or {}).get(q)
        if got is None or len(got) != n_samples:
            raise InputDataError(f"expected {n_samples} samples, got {0 if got is None else len(got)}",
                                 stage="rl_filter", row=q)
        c, ious = count_correct(got, gt)
        box, full = grpo_rewards(list(got), sol, reward)
        cols["n_correct_eval"].append(c)
        cols["n_correct_reward"].append(sum(b > 0 for b in box))
        cols["sample_ious"].append(ious)
        cols["sample_rewards"].append(full)
        cols["zero_std"].append(zero_std(full))
    out = table.append_column("n_correct", pa.array(cols[f"n_correct_{correct}"], pa.int32()))
    out = out.append_column("sample_ious", pa.array(cols["sample_ious"], pa.list_(pa.float32())))
    for name in ("n_correct_eval", "n_correct_reward"):
        out = out.append_column(name, pa.array(cols[name], pa.int32()))
    out = out.append_column("sample_rewards", pa.array(cols["sample_rewards"], pa.list_(pa.float32())))
    return out.append_column("zero_std", pa.array(cols["zero_std"], pa.bool_()))


def advantage_tally(scored) -> dict[str, int]:
    """``{"<n_correct_eval>,<n_correct_reward>,<zero_std 1|0|na>": items}`` of a scored table: all
    :func:`zero_advantage_stats` needs, small enough for shard metadata, and summed over shards by
    :func:`~deepperception.engine.sharding.merged_metadata`.

    >>> import pyarrow as pa
    >>> advantage_tally(pa.table({"n_correct_eval": [2, 2, 4], "n_correct_reward": [0, 0, 4], "zero_std": [True, True, None]}))
    {'2,0,1': 2, '4,4,na': 1}
    """
    keys = zip(scored.column("n_correct_eval").to_pylist(), scored.column("n_correct_reward").to_pylist(),
               scored.column("zero_std").to_pylist())
    return dict(Counter(f"{e},{r},{'na' if z is None else int(z)}" for e, r, z in keys))


def _parse_tally(tally: dict[str, int]) -> list[tuple[int, int, bool | None, int]]:
    out = []
    for key, n in tally.items():
        e, r, z = key.split(",")
        out.append((int(e), int(r), None if z == "na" else z == "1", int(n)))
    return out


def _zero_share(rows: list[tuple[bool | None, int]]) -> dict[str, Any]:
    groups = sum(n for _, n in rows)
    known = [(z, n) for z, n in rows if z is not None]
    zero = sum(n for z, n in known if z)
    return {"groups": groups, "zero_std": zero if known else None,
            "fraction": round(zero / groups, 4) if known and groups else None}


def zero_advantage_stats(tally: dict[str, int], n_samples: int, keep_min: int, keep_max: int, on_empty: OnEmpty,
                         correct: CorrectRule) -> dict[str, Any]:
    """What each notion of "correct" buys: the share of items whose ``n_samples`` answers, as one
    GRPO group under the full reward, have zero std (no gradient), over the whole pool and over the
    items each rule keeps (its own pool-wide policy; ``"empty"`` where it would keep nothing and
    ``on_empty="error"``). ``applied`` names the rule this run filtered with.

    >>> z = zero_advantage_stats({"2,0,1": 3, "2,2,0": 1, "0,0,1": 4}, 4, 1, 3, "error", "eval")
    >>> z["pool"], z["kept"]["eval"]["fraction"], z["kept"]["reward"]["fraction"]
    ({'groups': 8, 'zero_std': 7, 'fraction': 0.875}, 0.75, 0.0)
    """
    rows = _parse_tally(tally)
    kept: dict[str, Any] = {}
    for rule in RULES:
        idx = 0 if rule == "eval" else 1
        hist = count_histogram([c for row in rows for c in [row[idx]] * row[3]])
        try:
            policy = decide_policy(hist, n_samples, keep_min, keep_max, on_empty)
        except RLFilterEmptyError:
            policy = "empty"
        mask = [policy == "keep_all" or (policy == "filter" and keep_min <= row[idx] <= keep_max) for row in rows]
        share = _zero_share([(row[2], row[3]) for row, m in zip(rows, mask) if m])
        kept[rule] = {"policy": policy, "n_kept": share.pop("groups"), **share,
                      "count_histogram": {k: hist[k] for k in sorted(hist)}}
    return {"applied": correct, "group_size": n_samples, "pool": _zero_share([(row[2], row[3]) for row in rows]), "kept": kept}


def describe_zero_advantage(stats: dict[str, Any]) -> str:
    """One line for a report or card: each rule's kept items and their zero-advantage share.

    >>> describe_zero_advantage({"zero_advantage": zero_advantage_stats({"2,0,1": 3, "2,2,0": 1}, 4, 1, 3, "keep_all", "eval")})
    'zero-advantage groups (GRPO full reward, G=4): pool 75%; kept by eval (applied) 4 items, 75%; kept by reward 1 items, 0%'
    """
    z = stats.get("zero_advantage")
    if not z:
        return ""
    pct = lambda f: "n/a" if f is None else f"{100 * f:.0f}%"  # noqa: E731
    parts = [f"kept by {rule}{' (applied)' if rule == z['applied'] else ''} {k['n_kept']} items, {pct(k['fraction'])}"
             for rule, k in z["kept"].items()]
    return f"zero-advantage groups (GRPO full reward, G={z['group_size']}): pool {pct(z['pool']['fraction'])}; " + "; ".join(parts)


def count_histogram(counts) -> dict[int, int]:
    """``{n_correct: items}`` in first-seen order (the order error messages show; stats sort it).

    >>> count_histogram([0, 4, 0, 2])
    {0: 2, 4: 1, 2: 1}
    """
    return {int(k): int(v) for k, v in Counter(counts).items()}


def decide_policy(histogram: dict[int, int], n_samples: int, keep_min: int, keep_max: int,
                  on_empty: OnEmpty) -> str:
    """``"filter"`` when some item (of the whole pool: pass the histogram of every shard) has
    ``keep_min..keep_max`` correct answers; else ``"keep_all"``, or :class:`RLFilterEmptyError`.

    >>> decide_policy({0: 3, 2: 1}, 4, 1, 3, "error")
    'filter'
    >>> decide_policy({0: 3, 4: 1}, 4, 1, 3, "keep_all")
    'keep_all'
    """
    if any(keep_min <= c <= keep_max and n > 0 for c, n in histogram.items()):
        return "filter"
    if on_empty == "error":
        raise RLFilterEmptyError(
            f"no item has {keep_min}..{keep_max} of {n_samples} correct (histogram {dict(histogram)}); "
            "pass on_empty='keep_all' to train on every item anyway")
    return "keep_all"


def keep_mask(n_correct, keep_min: int, keep_max: int, policy: str):
    """Boolean mask of the rows to keep, given the pool-wide ``policy`` of :func:`decide_policy`.

    >>> keep_mask([0, 1, 3, 4], 1, 3, "filter").to_pylist()
    [False, True, True, False]
    >>> keep_mask([0, 4], 1, 3, "keep_all").to_pylist()
    [True, True]
    """
    import pyarrow as pa

    counts = n_correct.to_pylist() if hasattr(n_correct, "to_pylist") else list(n_correct)
    if policy == "keep_all":
        return pa.array([True] * len(counts))
    return pa.array([keep_min <= c <= keep_max for c in counts])


def filter_stats(n_in: int, n_kept: int, histogram: dict[int, int], policy: str, *, on_empty: OnEmpty,
                 n_samples: int, keep_min: int, keep_max: int, temperature: float, top_k: int, top_p: float,
                 max_new_tokens: int, seed: int, ckpt_dir: str | Path | None, tally: dict[str, int],
                 correct: CorrectRule = "eval", reward: RewardConfig | None = None) -> dict[str, Any]:
    """The ``stats`` a filtered dataset records (the same keys whether it ran in one piece or in
    shards); ``tally`` is :func:`advantage_tally` of every scored row."""
    return {
        "n_in": n_in, "n_kept": n_kept, "count_histogram": {int(k): v for k, v in sorted(histogram.items())},
        "policy_applied": policy, "on_empty": on_empty, "n_samples": n_samples, "keep_min": keep_min,
        "keep_max": keep_max, "correct": correct, "correct_iou": CORRECT_IOU,
        "reward": (reward or RewardConfig()).model_dump(), "temperature": temperature, "top_k": top_k,
        "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed,
        "checkpoint": None if ckpt_dir is None else str(ckpt_dir),
        "zero_advantage": zero_advantage_stats(tally, n_samples, keep_min, keep_max, on_empty, correct),
    }


def rl_filter(
    grpo_rows,
    ckpt_dir: str | Path | None,
    n_samples: int = 4,
    keep_min: int = 1,
    keep_max: int = 3,
    *,
    on_empty: OnEmpty = "error",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    samples: dict[str, list[str]] | None = None,
    correct: CorrectRule = "eval",
    reward: RewardConfig | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Filter GRPO rows (``question_id, image, problem, solution``) by stage-1 success counts.

    Returns ``(kept, stats)``. ``kept`` is the input table restricted to kept items (input order) with
    the columns :func:`score` adds (``n_correct`` under the ``correct`` rule, ``sample_ious``, ...).
    ``stats``: ``n_in``, ``n_kept``, ``count_histogram`` ({n_correct: items}), ``policy_applied``
    (``"filter"`` or ``"keep_all"``), ``zero_advantage`` (:func:`zero_advantage_stats`) and every
    parameter. ``samples`` (qid -> answers) skips sampling (precomputed answers); otherwise
    :func:`~deepperception.model.sampling.sample_answers` runs ``ckpt_dir`` with the given decoding.
    ``reward`` is GRPO's reward config (None: the released defaults).
    """
    check_params(n_samples, keep_min, keep_max, on_empty)
    annotated = score(grpo_rows, ckpt_dir, n_samples, temperature=temperature, top_k=top_k, top_p=top_p,
                      max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, device=device,
                      samples=samples, correct=correct, reward=reward)
    counts = annotated.column("n_correct").to_pylist()
    histogram = count_histogram(counts)
    policy = decide_policy(histogram, n_samples, keep_min, keep_max, on_empty)
    kept = annotated.filter(keep_mask(counts, keep_min, keep_max, policy))
    stats = filter_stats(annotated.num_rows, kept.num_rows, histogram, policy, on_empty=on_empty, n_samples=n_samples,
                         keep_min=keep_min, keep_max=keep_max, temperature=temperature, top_k=top_k, top_p=top_p,
                         max_new_tokens=max_new_tokens, seed=seed, ckpt_dir=ckpt_dir,
                         tally=advantage_tally(annotated), correct=correct, reward=reward)
    return kept, stats


# ---- shard by shard ---------------------------------------------------------------------------

def shard_seeds(part_rows: list[int], seed: int, batch_size: int) -> list[int]:
    """The sampling seed of each shard: ``seed`` plus the number of sampling batches before it, so
    batch ``b`` of the whole pool runs under ``seed + b`` as in one unsharded run.

    >>> shard_seeds([5, 5, 3], seed=10, batch_size=2)
    [10, 13, 16]
    >>> shard_seeds([7], seed=0, batch_size=8)
    [0]
    """
    out, batches = [], 0
    for rows in part_rows:
        out.append(seed + batches)
        batches += -(-int(rows) // batch_size)
    return out


_LOADED: dict[tuple, tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()
_SAMPLE_LOCK = threading.Lock()


def _checkpoint_key(ckpt_dir: str | Path, device: str, dtype: str) -> tuple:
    """A checkpoint's identity in this process: its path and its top-level files' sizes and mtimes
    (a directory rewritten in place is loaded again)."""
    path = Path(ckpt_dir).resolve()
    stamp = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()))
    return (str(path), device, dtype, stamp)


def cached_model(ckpt_dir: str | Path, device: str = "cpu", dtype: str | None = None) -> tuple[Any, Any]:
    """``(processor, model)`` of a checkpoint, loaded once per process and reused by every shard
    that runs there (threads share it; each Ray worker process loads it once). Only the latest
    checkpoint is kept, so a process that moves on to another model frees the previous one."""
    from deepperception.model.loading import load_model, load_processor

    dtype = dtype or ("float32" if device == "cpu" else "bfloat16")
    key = _checkpoint_key(ckpt_dir, device, dtype)
    with _LOAD_LOCK:
        hit = _LOADED.get(key)
        if hit is None:
            _LOADED.clear()
            log.info("rl-filter: loading %s on %s (%s)", ckpt_dir, device, dtype)
            ckpt = Path(ckpt_dir)
            hit = _LOADED[key] = (load_processor(ckpt), load_model(ckpt, device=device, dtype=dtype))
        return hit


def clear_model_cache() -> None:
    """Drop the cached stage-1 model (frees its memory, on the GPU too)."""
    import sys

    with _LOAD_LOCK:
        had = bool(_LOADED)
        _LOADED.clear()
    torch = sys.modules.get("torch")
    if had and torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def sample_cached(
    rows: Any,
    ckpt_dir: str | Path,
    n: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 512,
    seed: int = 0,
    batch_size: int = 8,
    *,
    top_k: int = 0,
    top_p: float = 1.0,
    device: str = "cpu",
) -> dict[str, list[str]]:
    """:func:`~deepperception.model.sampling.sample_answers` (r1 prompt, no pre-resize) on the
    process's :func:`cached_model`: the same batches, seeds and answers, without reloading the
    checkpoint per shard. Calls are serialised: the seeded RNG (``torch.manual_seed``) is global to
    the process, so two shards sampling at once on threads would change each other's answers."""
    from deepperception.model.sampling import sample_answers

    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    with _SAMPLE_LOCK:
        return sample_answers(rows, ckpt_dir, n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                              batch_size=batch_size, top_k=top_k, top_p=top_p, device=device,
                              loaded=cached_model(ckpt_dir, device=device))


def shard_checkpoint(store, spec: dict[str, Any]) -> Path:
    """The stage-1 checkpoint directory for a shard: the path the stage resolved (``ckpt_dir``,
    present wherever the shard runs on the stage's machine), else the checkpoint artifact's files
    materialised on this worker (a Ray worker on another machine with an S3 store)."""
    from deepperception.store import ArtifactRef

    path = Path(spec["ckpt_dir"])
    if (path / "config.json").is_file():
        return path
    ref = ArtifactRef.parse(spec["checkpoint"])
    if store.manifest(ref).metadata.get("external_path"):
        raise ArtifactError(f"checkpoint {ref} is the external directory {path}, which this worker does not have "
                            "(mount it at the same path, or store the checkpoint's files in the artifact store)")
    return store.materialize(ref)


def rl_score_shard(job: "ShardJob") -> Any:
    """Score part ``spec["part"]`` of the GRPO pool (spec: pool, part, checkpoint, ckpt_dir, rl_filter,
    seed) and commit every row, annotated, as the shard's ``scored`` table with its count histogram."""
    from deepperception.store import ArtifactRef

    store = job.open_store()
    cfg = RLFilterConfig.model_validate(job.spec["rl_filter"])
    apply_determinism(cfg.determinism)
    part = job.spec["part"]
    table = store.read_part(ArtifactRef.parse(job.spec["pool"]), part)
    scored = score(table, shard_checkpoint(store, job.spec) if table.num_rows else None, cfg.n_samples,
                   **cfg.sampling(), max_new_tokens=cfg.max_new_tokens, seed=job.spec["seed"],
                   batch_size=cfg.batch_size, device=cfg.device, sampler=sample_cached, allow_empty=True,
                   correct=cfg.correct, reward=cfg.reward_config())
    meta = {"count_histogram": {str(k): v for k, v in count_histogram(scored.column("n_correct").to_pylist()).items()},
            "advantage_tally": advantage_tally(scored), "rows_in": table.num_rows, "part": part,
            "seed": job.spec["seed"]}
    return store.commit_shard(job.out_ref, job.unit, job.index, {SCORED_TABLE: scored}, meta, replace=job.redo)
