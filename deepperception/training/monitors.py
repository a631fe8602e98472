"""Health monitors of the training stages: per-step numbers that show reward hacking or collapse
while a run is still cheap to stop, a table stored with the run, and a summary with flags.

GRPO, every logged step (``logging_steps``, 1 by default):

* from TRL's own logs: reward mean/std per reward function (``rewards/<f>/mean|std``), the share
  of groups whose G rewards are all equal (``frac_reward_zero_std``: no advantage, no gradient),
  completion length (mean and the share cut at ``max_completion_length``), KL;
* from the completions, through :func:`monitored_reward_funcs`: parse rate (completions where
  the released parser finds a box in the first ``<answer>``), share of whole-image boxes (box
  area >= :attr:`Thresholds.whole_image_area` of the 0-1000 frame), mean predicted box area.
  The hook is TRL's ``log_metric`` kwarg of reward functions: the first reward function is
  wrapped to compute these statistics after it returns, *its rewards unchanged*; no extra reward
  function takes part in the loss (a weight-0 reward would still change TRL's reward std logs
  and cost a column), so the trained weights are identical with and without monitors.
* derived here: format-vs-IoU divergence over a window (format reward rising while the box
  reward falls).

SFT: loss, ``mean_token_accuracy`` (TRL's) and ``image_tokens`` (mean ``<|image_pad|>`` tokens
per micro-batch, counted by the stage's trainer subclass in ``training_step``, i.e. in the main
process after collation, whatever ``dataloader_num_workers`` is).

The tables are built from ``trainer.state.log_history``, which a resumed run restores from its
checkpoint, so a run killed and resumed still has every step's row. :func:`summarize` applies
:class:`Thresholds`.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

MONITOR_PREFIX = "monitor/"


@dataclass(frozen=True)
class Thresholds:
    """When the summary flags a run. Means are over the last ``window`` logged steps, and nothing
    is flagged before ``window`` steps are logged (early steps of a healthy run look collapsed).

    * ``whole_image_area`` (0.9): a predicted box covering >= 90 % of the frame is "whole image"
      (the degenerate answer that still earns IoU on large targets);
    * ``whole_image_share`` (0.5): flag ``reward_hacking_whole_image`` when that many boxes are;
    * ``divergence`` (0.05): flag ``reward_hacking_format_up_iou_down`` when over ``window`` steps
      the format reward rose and the box reward fell by at least this much each;
    * ``zero_std_share`` (0.95): flag ``collapse_zero_std`` (almost no group has any advantage);
    * ``min_completion_tokens`` (2) / ``clipped_share`` (0.9): flag ``collapse_length_zero`` /
      ``collapse_length_max`` (completions vanish, or nearly all hit ``max_completion_length``);
    * ``min_parse_rate`` (0.05): flag ``parse_collapse`` when a run that once parsed >= 5x this
      now almost never produces a box.
    """

    window: int = 5
    whole_image_area: float = 0.9
    whole_image_share: float = 0.5
    divergence: float = 0.05
    zero_std_share: float = 0.95
    min_completion_tokens: float = 2.0
    clipped_share: float = 0.9
    min_parse_rate: float = 0.05


def completion_stats(texts: Sequence[str], whole_image_area: float = Thresholds.whole_image_area) -> dict[str, float]:
    """Parse rate, whole-image share and mean box area (fraction of the 0-1000 frame, over parsed
    boxes; NaN when none parsed) of a batch of completion texts.

    >>> s = completion_stats(["<answer>(0,0),(1000,1000)</answer>", "<answer>(0,0),(500,500)</answer>", "none"])
    >>> round(s["parse_rate"], 3), round(s["whole_image_share"], 3), s["mean_box_area"]
    (0.667, 0.333, 0.625)
    """
    from deepperception.training.rewards import predicted_box

    boxes = [predicted_box(t) for t in texts]
    areas = [(b[2] - b[0]) * (b[3] - b[1]) / 1e6 for b in boxes if b is not None]
    n = max(len(texts), 1)
    return {"parse_rate": len(areas) / n,
            "whole_image_share": sum(a >= whole_image_area for a in areas) / n,
            "mean_box_area": sum(areas) / len(areas) if areas else math.nan}


def monitored_reward_funcs(funcs: list[Callable[..., list[float]]],
                           thresholds: Thresholds = Thresholds()) -> list[Callable[..., list[float]]]:
    """``funcs`` with the first one wrapped to also report :func:`completion_stats` through TRL's
    ``log_metric`` (as ``monitor/parse_rate`` etc.). Same names, same rewards."""
    from deepperception.training.rewards import completion_text

    if not funcs:
        return funcs
    first = funcs[0]

    @functools.wraps(first)
    def wrapped(*args: Any, **kwargs: Any) -> list[float]:
        rewards = first(*args, **kwargs)
        log_metric = kwargs.get("log_metric")
        completions = kwargs.get("completions", args[0] if args else None)
        if log_metric is not None and completions is not None:
            stats = completion_stats([completion_text(c) for c in completions], thresholds.whole_image_area)
            for k, v in stats.items():
                if not math.isnan(v):  # TRL averages what is logged; a NaN would poison the mean
                    log_metric(MONITOR_PREFIX + k, v)
        return rewards

    wrapped.__name__ = getattr(first, "__name__", "reward")
    return [wrapped, *funcs[1:]]


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def grpo_rows(log_history: list[dict], reward_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per logged GRPO step (log entries with ``reward``)."""
    rows = []
    for h in log_history:
        if "reward" not in h:
            continue
        row: dict[str, Any] = {"step": h.get("step"), "reward": _num(h.get("reward")),
                               "reward_std": _num(h.get("reward_std"))}
        for name in reward_names:
            row[f"{name}_mean"] = _num(h.get(f"rewards/{name}/mean"))
            row[f"{name}_std"] = _num(h.get(f"rewards/{name}/std"))
        row.update(parse_rate=_num(h.get(MONITOR_PREFIX + "parse_rate")),
                   whole_image_share=_num(h.get(MONITOR_PREFIX + "whole_image_share")),
                   mean_box_area=_num(h.get(MONITOR_PREFIX + "mean_box_area")),
                   zero_std_share=_num(h.get("frac_reward_zero_std")),
                   completion_length=_num(h.get("completions/mean_length")),
                   clipped_share=_num(h.get("completions/clipped_ratio")),
                   kl=_num(h.get("kl")), loss=_num(h.get("loss")))
        rows.append(row)
    add_divergence(rows, reward_names)
    return rows


def add_divergence(rows: list[dict[str, Any]], reward_names: Sequence[str], window: int = Thresholds.window) -> None:
    """``format_iou_divergence`` per row: (format reward change) - (box reward change) over the
    last ``window`` rows; positive = format rising faster than the box reward.

    >>> rows = [{"iou_reward_mean": 0.5 - 0.1 * i, "format_reward_mean": 0.1 * i} for i in range(3)]
    >>> add_divergence(rows, ["iou_reward", "format_reward"], window=2)
    >>> [r["format_iou_divergence"] for r in rows]
    [None, 0.2, 0.4]
    """
    fmt = next((n for n in reward_names if "format" in n), None)
    box = next((n for n in reward_names if n != fmt), None)
    for i, r in enumerate(rows):
        j = max(0, i - window)
        a, b = rows[j], r
        keys = (f"{fmt}_mean", f"{box}_mean")
        if fmt is None or box is None or i == 0 or any(a.get(k) is None or b.get(k) is None for k in keys):
            r["format_iou_divergence"] = None
            continue
        d_fmt, d_box = b[keys[0]] - a[keys[0]], b[keys[1]] - a[keys[1]]
        r["format_iou_divergence"] = round(d_fmt - d_box, 6)
        r["_d_format"], r["_d_box"] = d_fmt, d_box


def _tail_mean(rows: list[dict], key: str, window: int) -> float | None:
    vals = [r[key] for r in rows[-window:] if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(rows: list[dict[str, Any]], thresholds: Thresholds = Thresholds()) -> dict[str, Any]:
    """Last-window means of the monitored numbers and the flags :class:`Thresholds` raises.

    >>> bad = [{"step": i, "whole_image_share": 0.8, "zero_std_share": 1.0, "completion_length": 30.0,
    ...         "clipped_share": 0.0, "parse_rate": 0.9} for i in range(5)]
    >>> summarize(bad)["flags"]
    ['reward_hacking_whole_image', 'collapse_zero_std']
    >>> summarize([])["flags"]
    []
    """
    t = thresholds
    w = t.window
    tail = {k: _tail_mean(rows, k, w) for k in ("whole_image_share", "zero_std_share", "completion_length",
                                                "clipped_share", "parse_rate", "mean_box_area", "reward")}
    flags: list[str] = []
    if len(rows) < w:  # a window's worth of steps first: step 1 of any run "fails" everything
        return {"steps_logged": len(rows), "window": w, "last_window": tail, "flags": flags,
                "thresholds": asdict(t)}
    if tail["whole_image_share"] is not None and tail["whole_image_share"] >= t.whole_image_share:
        flags.append("reward_hacking_whole_image")
    last = rows[-1] if rows else {}
    if last.get("_d_format") is not None and last["_d_format"] >= t.divergence and last["_d_box"] <= -t.divergence:
        flags.append("reward_hacking_format_up_iou_down")
    if tail["zero_std_share"] is not None and tail["zero_std_share"] >= t.zero_std_share:
        flags.append("collapse_zero_std")
    if tail["completion_length"] is not None and tail["completion_length"] < t.min_completion_tokens:
        flags.append("collapse_length_zero")
    if tail["clipped_share"] is not None and tail["clipped_share"] >= t.clipped_share:
        flags.append("collapse_length_max")
    peak = max((r["parse_rate"] for r in rows if r.get("parse_rate") is not None), default=None)
    if (peak is not None and tail["parse_rate"] is not None and peak >= 5 * t.min_parse_rate
            and tail["parse_rate"] < t.min_parse_rate):
        flags.append("parse_collapse")
    return {"steps_logged": len(rows), "window": w, "last_window": tail, "flags": flags,
            "thresholds": asdict(t)}


def public_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the private helper keys (for tables and JSON)."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def sft_rows(log_history: list[dict]) -> list[dict[str, Any]]:
    """One row per logged SFT step: loss, token accuracy, image tokens per micro-batch, lr."""
    return [{"step": h.get("step"), "loss": _num(h.get("loss")),
             "mean_token_accuracy": _num(h.get("mean_token_accuracy")),
             "image_tokens": _num(h.get("image_tokens")), "num_tokens": _num(h.get("num_tokens")),
             "learning_rate": _num(h.get("learning_rate"))}
            for h in log_history if "loss" in h and "train_loss" not in h]


def make_health_callback(reward_names: Sequence[str], thresholds: Thresholds = Thresholds()):
    """A ``TrainerCallback`` that re-checks the flags at every GRPO log and warns once per new flag
    (the stored table and summary are rebuilt from the log history at the end)."""
    from transformers import TrainerCallback

    class HealthMonitor(TrainerCallback):
        def __init__(self) -> None:
            self.seen: set[str] = set()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "reward" in logs:
                summary = summarize(grpo_rows(state.log_history, reward_names), thresholds)
                for flag in summary["flags"]:
                    if flag not in self.seen:
                        self.seen.add(flag)
                        log.warning("grpo step %s: health flag %s (%s)", state.global_step, flag,
                                    summary["last_window"])
            return control

    return HealthMonitor()
