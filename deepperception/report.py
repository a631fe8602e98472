"""The reproduction report: for every bench (the composed one and any extra, e.g. the real
KVG-Bench), the arms side by side (base in each prompt mode, direct-SFT, CoT-SFT, CoT-SFT+GRPO)
with Acc@0.5, its 95% bootstrap CI and mean IoU per overall / seen / unseen group, the paired
bootstrap differences between arms (same questions resampled together,
:func:`deepperception.eval.bootstrap.paired_bootstrap`), and the per-category table. Every number
carries the artifact versions it came from."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field

from deepperception.comparison import COMPOSED_BENCH, arm_title, differences_for
from deepperception.eval.bootstrap import paired_bootstrap
from deepperception.eval.groups import DOMAIN_GROUPS as OVERALL_GROUPS  # all, seen domain, unseen domain


class EvalSummary(BaseModel):
    """One checkpoint's evaluation on one bench, with its lineage."""

    label: str = Field(description="Arm label (base (r1 prompt), direct-sft, sft, grpo, ...) or any name.")
    checkpoint: str = Field(description="Checkpoint artifact name@version (or an external path).")
    bench: str = Field(description="Bench artifact name@version.")
    bench_name: str = Field(COMPOSED_BENCH, description="The bench's name in the report (composed, kvg-bench, ...).")
    evaluation: str = Field(description="Evaluation artifact name@version holding outputs and predictions.")
    config_hash: str = Field(description="Config hash of the evaluation version.")
    code_version: str = Field(description="Code version of the evaluation version.")
    metrics: dict[str, Any] = Field(description="Official metrics.json content.")
    strict: dict[str, Any] = Field(default_factory=dict, description="Strict-parser summary per group.")
    cis: dict[str, Any] = Field(default_factory=dict, description="95% bootstrap CI of Acc per group.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Training metrics and notes of the checkpoint.")


class Difference(BaseModel):
    """Paired-bootstrap ``Acc(A) - Acc(B)`` of two arms on the same bench questions (fractions)."""

    bench_name: str = Field(description="Bench both arms were scored on.")
    a: str = Field(description="Label of arm A.")
    b: str = Field(description="Label of arm B.")
    why: str = Field(description="What the difference measures.")
    group: str = Field(description="all / seen domain / unseen domain.")
    n: int = Field(description="Questions in the group.")
    acc_a: float = Field(description="Acc@0.5 of A.")
    acc_b: float = Field(description="Acc@0.5 of B.")
    delta: float = Field(description="Acc(A) - Acc(B).")
    lo: float = Field(description="Lower end of the 95% paired-bootstrap CI of delta.")
    hi: float = Field(description="Upper end of the 95% paired-bootstrap CI of delta.")
    p_value: float = Field(description="Two-sided bootstrap sign fraction (p-value-like, not an exact test).")
    n_resamples: int = Field(description="Bootstrap resamples.")
    seed: int = Field(description="Bootstrap seed.")
    evaluation_a: str = Field(description="Evaluation artifact of A (its predictions table).")
    evaluation_b: str = Field(description="Evaluation artifact of B.")


def paired_differences(
    summaries: list[EvalSummary], predictions: dict[str, pd.DataFrame], *, n_resamples: int = 2000, seed: int = 0,
) -> list[Difference]:
    """Per bench, the :data:`deepperception.comparison.DIFFERENCES` whose arms were both scored,
    per overall / seen / unseen group (empty groups left out). ``predictions`` maps an
    evaluation ref to its predictions table."""
    out: list[Difference] = []
    for bench in dict.fromkeys(s.bench_name for s in summaries):
        by_label = {s.label: s for s in summaries if s.bench_name == bench}
        for a, b, why in differences_for(list(by_label)):
            sa, sb = by_label[a], by_label[b]
            res = paired_bootstrap(predictions[sa.evaluation], predictions[sb.evaluation], n_resamples=n_resamples,
                                   seed=seed)
            for group in OVERALL_GROUPS:
                r = res.get(group)
                if r is None or r.n == 0:
                    continue
                out.append(Difference(bench_name=bench, a=a, b=b, why=why, group=group, n=r.n, acc_a=r.a, acc_b=r.b,
                                      delta=r.delta, lo=r.lo, hi=r.hi, p_value=r.p_value, n_resamples=n_resamples,
                                      seed=seed, evaluation_a=sa.evaluation, evaluation_b=sb.evaluation))
    return out


def _cell(metrics: dict[str, Any], group: str) -> dict[str, Any] | None:
    g = metrics.get(group)
    if not isinstance(g, dict):
        return None
    return g.get("all", g) if isinstance(g.get("all", g), dict) else None


def groups_in(summaries: list[EvalSummary]) -> list[str]:
    """Overall groups first, then categories in the order the metrics list them."""
    order: list[str] = [g for g in OVERALL_GROUPS]
    for s in summaries:
        for key in s.metrics:
            if key not in order:
                order.append(key)
    return order


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _pct(v: Any) -> str:
    """Official metrics are fractions; the report shows percentages like the paper's tables.

    >>> _pct(0.52395)
    '52.40'
    """
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.2f}"


def _signed_pct(v: float) -> str:
    """A difference in percentage points.

    >>> _signed_pct(0.0808), _signed_pct(-0.01)
    ('+8.08', '-1.00')
    """
    return f"{100 * v:+.2f}"


def _ci_text(s: EvalSummary, group: str) -> str:
    ci = s.cis.get(group)
    if not ci:
        return ""
    lo, hi = ci.get("lo"), ci.get("hi")
    return f" [{_pct(lo)}, {_pct(hi)}]" if lo is not None and hi is not None else ""


def _header_value(v: Any) -> str:
    """Header values in backticks; a mapping as ``k: v`` pairs.

    >>> _header_value({"kvg-bench": "bench@1"}), _header_value("bench@2")
    ('`kvg-bench`: `bench@1`', '`bench@2`')
    """
    if isinstance(v, dict):
        return ", ".join(f"`{k}`: `{x}`" for k, x in v.items()) or "—"
    return f"`{v}`"


def _side_by_side(summaries: list[EvalSummary]) -> list[str]:
    head = "| arm | " + " | ".join(f"{g} N | {g} Acc@0.5 [95% CI] | {g} IoU" for g in OVERALL_GROUPS) + \
        " | evaluation | checkpoint |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(OVERALL_GROUPS) + "---|---|"]
    for s in summaries:
        row = [arm_title(s.label)]
        for g in OVERALL_GROUPS:
            c = _cell(s.metrics, g)
            row += ([_fmt(c.get("Num")), _pct(c.get("Acc")) + _ci_text(s, g), _pct(c.get("IoU"))] if c
                    else ["—", "—", "—"])
        row += [f"`{s.evaluation}`", f"`{s.checkpoint}`"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _differences(diffs: list[Difference]) -> list[str]:
    lines = ["| difference | group | N | A % | B % | A − B (points) [95% CI] | p | evaluations A, B |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for d in diffs:
        lines.append(
            f"| {arm_title(d.a)} − {arm_title(d.b)} ({d.why}) | {d.group} | {d.n} | {_pct(d.acc_a)} | {_pct(d.acc_b)} | "
            f"{_signed_pct(d.delta)} [{_signed_pct(d.lo)}, {_signed_pct(d.hi)}] | {d.p_value:.3f} | "
            f"`{d.evaluation_a}`, `{d.evaluation_b}` |")
    return lines


def _per_category(summaries: list[EvalSummary]) -> list[str]:
    labels = [s.label for s in summaries]
    head = "| group | N | " + " | ".join(f"{l} Acc@0.5 | {l} IoU" for l in labels) + " |"
    lines = [head, "|---|---:|" + "---:|---:|" * len(labels)]
    for group in groups_in(summaries):
        cells = [_cell(s.metrics, group) for s in summaries]
        if all(c is None for c in cells):
            continue
        n = next((c.get("Num") for c in cells if c), None)
        row = [group, _fmt(n)]
        for s, c in zip(summaries, cells):
            row += [(_pct(c.get("Acc")) + _ci_text(s, group)) if c else "—", _pct(c.get("IoU")) if c else "—"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def render_markdown(summaries: list[EvalSummary], header: dict[str, Any],
                    differences: list[Difference] | None = None) -> str:
    lines = ["# DeepPerception reproduction report", ""]
    for k, v in header.items():
        lines.append(f"- **{k}**: {_header_value(v)}")
    lines += [
        "",
        "Acc@0.5 is the official KVG-Bench accuracy (IoU ≥ 0.5, official 8-regex parser) and IoU the mean IoU,",
        "both in percent (metrics.json and report.json keep the official fractions). Brackets: 95% bootstrap CI.",
        "Differences are paired: the same questions are resampled together for both arms.",
        "",
    ]
    diffs = differences or []
    for bench in dict.fromkeys(s.bench_name for s in summaries):
        on = [s for s in summaries if s.bench_name == bench]
        lines += [f"## Bench {bench} (`{on[0].bench}`)", "", "### Arms side by side", ""] + _side_by_side(on)
        here = [d for d in diffs if d.bench_name == bench]
        if here:
            lines += ["", "### Differences (paired bootstrap)", ""] + _differences(here)
        lines += ["", "### Per category", ""] + _per_category(on) + [""]
    if any(s.strict for s in summaries):
        lines += ["## Strict scoring (box must be a valid box inside <answer>)", ""]
        lines += ["| bench | checkpoint | strict Acc % | parse rate % | official hits from outside <answer> |",
                  "|---|---|---:|---:|---:|"]
        for s in summaries:
            st = s.strict.get("all", s.strict)
            lines.append(
                f"| {s.bench_name} | {s.label} | {_pct(st.get('Acc'))} | {_pct(st.get('parse_rate'))} | "
                f"{_fmt(st.get('official_hits_outside_answer'))} |"
            )
    lines += ["", "## Lineage", "",
              "| bench | checkpoint | checkpoint artifact | bench artifact | evaluation | config hash | code |",
              "|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s.bench_name} | {s.label} | `{s.checkpoint}` | `{s.bench}` | `{s.evaluation}` | "
                     f"`{s.config_hash}` | `{s.code_version}` |")
    trained = list({s.checkpoint: (s.label, s.extra.get("train")) for s in summaries if s.extra.get("train")}.values())
    if trained:
        lines += ["", "## Training", "", "| checkpoint | steps | runtime s | loss first → last | mean reward first → last |",
                  "|---|---:|---:|---|---|"]
        for label, t in trained:
            rewards = t.get("reward") or []
            reward_txt = f"{rewards[0]:.3f} → {rewards[-1]:.3f}" if rewards else "—"
            loss_txt = (f"{t['train_loss_first']:.4f} → {t['train_loss_last']:.4f}"
                        if t.get("train_loss_first") is not None else "—")
            lines.append(f"| {label} | {_fmt(t.get('steps'))} | {_fmt(t.get('runtime_s'))} | {loss_txt} | {reward_txt} |")
    notes = list(dict.fromkeys(f"- {s.label}: {note}" for s in summaries for note in s.extra.get("notes", [])))
    if notes:
        lines += ["", "## Notes", ""] + notes
    return "\n".join(lines) + "\n"


def render_json(summaries: list[EvalSummary], header: dict[str, Any],
                differences: list[Difference] | None = None) -> dict[str, Any]:
    """The report's content as JSON: ``checkpoints`` (one entry per arm and bench, with lineage)
    and ``differences`` (paired bootstrap, fractions)."""
    return {"header": header, "checkpoints": [s.model_dump(mode="json") for s in summaries],
            "differences": [d.model_dump(mode="json") for d in differences or []]}
