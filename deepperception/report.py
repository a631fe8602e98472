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
from deepperception.markdown import ACC, md_code, md_text


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
        return ", ".join(f"{md_code(k)}: {md_code(x)}" for k, x in v.items()) or "—"
    return md_code(v)


def _side_by_side(summaries: list[EvalSummary]) -> list[str]:
    head = "| arm | " + " | ".join(f"{md_text(g)} N | {md_text(g)} {ACC} [95% CI] | {md_text(g)} IoU"
                                  for g in OVERALL_GROUPS) + " | evaluation | checkpoint |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(OVERALL_GROUPS) + "---|---|"]
    for s in summaries:
        row = [md_text(arm_title(s.label))]
        for g in OVERALL_GROUPS:
            c = _cell(s.metrics, g)
            row += ([_fmt(c.get("Num")), _pct(c.get("Acc")) + _ci_text(s, g), _pct(c.get("IoU"))] if c
                    else ["—", "—", "—"])
        row += [md_code(s.evaluation), md_code(s.checkpoint)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _differences(diffs: list[Difference]) -> list[str]:
    lines = ["| difference | group | N | A % | B % | A − B (points) [95% CI] | p | evaluations A, B |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for d in diffs:
        lines.append(
            f"| {md_text(arm_title(d.a))} − {md_text(arm_title(d.b))} ({md_text(d.why)}) | {md_text(d.group)} | "
            f"{d.n} | {_pct(d.acc_a)} | {_pct(d.acc_b)} | "
            f"{_signed_pct(d.delta)} [{_signed_pct(d.lo)}, {_signed_pct(d.hi)}] | {d.p_value:.3f} | "
            f"{md_code(d.evaluation_a)}, {md_code(d.evaluation_b)} |")
    return lines


def _per_category(summaries: list[EvalSummary]) -> list[str]:
    labels = [s.label for s in summaries]
    head = "| group | N | " + " | ".join(f"{md_text(l)} {ACC} | {md_text(l)} IoU" for l in labels) + " |"
    lines = [head, "|---|---:|" + "---:|---:|" * len(labels)]
    for group in groups_in(summaries):
        cells = [_cell(s.metrics, group) for s in summaries]
        if all(c is None for c in cells):
            continue
        n = next((c.get("Num") for c in cells if c), None)
        row = [md_text(group), _fmt(n)]
        for s, c in zip(summaries, cells):
            row += [(_pct(c.get("Acc")) + _ci_text(s, group)) if c else "—", _pct(c.get("IoU")) if c else "—"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def render_markdown(summaries: list[EvalSummary], header: dict[str, Any],
                    differences: list[Difference] | None = None) -> str:
    lines = ["# DeepPerception reproduction report", ""]
    for k, v in header.items():
        lines.append(f"- **{md_text(k)}**: {_header_value(v)}")
    lines += [
        "",
        f"{ACC} is the official KVG-Bench accuracy (IoU ≥ 0.5, official 8-regex parser) and IoU the mean IoU,",
        "both in percent (metrics.json and report.json keep the official fractions). Brackets: 95% bootstrap CI.",
        "Differences are paired: the same questions are resampled together for both arms.",
        "",
    ]
    diffs = differences or []
    for bench in dict.fromkeys(s.bench_name for s in summaries):
        on = [s for s in summaries if s.bench_name == bench]
        lines += [f"## Bench {md_text(bench)} ({md_code(on[0].bench)})", "", "### Arms side by side", ""] + _side_by_side(on)
        here = [d for d in diffs if d.bench_name == bench]
        if here:
            lines += ["", "### Differences (paired bootstrap)", ""] + _differences(here)
        lines += ["", "### Per category", ""] + _per_category(on) + [""]
    if any(s.strict for s in summaries):
        lines += ["## Strict scoring (box must be a valid box inside `<answer>`)", ""]
        lines += ["| bench | checkpoint | strict Acc % | parse rate % | official hits from outside `<answer>` |",
                  "|---|---|---:|---:|---:|"]
        for s in summaries:
            st = s.strict.get("all", s.strict)
            lines.append(
                f"| {md_text(s.bench_name)} | {md_text(s.label)} | {_pct(st.get('Acc'))} | {_pct(st.get('parse_rate'))} | "
                f"{_fmt(st.get('official_hits_outside_answer'))} |"
            )
    lines += ["", "## Lineage", "",
              "| bench | checkpoint | checkpoint artifact | bench artifact | evaluation | config hash | code |",
              "|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {md_text(s.bench_name)} | {md_text(s.label)} | {md_code(s.checkpoint)} | {md_code(s.bench)} | "
                     f"{md_code(s.evaluation)} | {md_code(s.config_hash)} | {md_code(s.code_version)} |")
    trained = list({s.checkpoint: (s.label, s.extra.get("train")) for s in summaries if s.extra.get("train")}.values())
    if trained:
        lines += ["", "## Training", "", "| checkpoint | steps | runtime s | loss first → last | mean reward first → last |",
                  "|---|---:|---:|---|---|"]
        for label, t in trained:
            rewards = t.get("reward") or []
            reward_txt = f"{rewards[0]:.3f} → {rewards[-1]:.3f}" if rewards else "—"
            loss_txt = (f"{t['train_loss_first']:.4f} → {t['train_loss_last']:.4f}"
                        if t.get("train_loss_first") is not None else "—")
            lines.append(f"| {md_text(label)} | {_fmt(t.get('steps'))} | {_fmt(t.get('runtime_s'))} | {loss_txt} | {reward_txt} |")
    notes = list(dict.fromkeys(f"- {md_text(s.label)}: {note}" for s in summaries for note in s.extra.get("notes", [])))
    if notes:
        lines += ["", "## Notes", ""] + notes
    return "\n".join(lines) + "\n"


def render_json(summaries: list[EvalSummary], header: dict[str, Any],
                differences: list[Difference] | None = None) -> dict[str, Any]:
    """The report's content as JSON: ``checkpoints`` (one entry per arm and bench, with lineage)
    and ``differences`` (paired bootstrap, fractions)."""
    return {"header": header, "checkpoints": [s.model_dump(mode="json") for s in summaries],
            "differences": [d.model_dump(mode="json") for d in differences or []]}


# ---- Views of a finished run for an orchestrator's UI (tasks/reporting.py publishes them) ----

def _rounded_pct(v: Any) -> float | None:
    """A fraction as a percentage with two decimals, None when missing.

    >>> _rounded_pct(0.52395), _rounded_pct(None)
    (52.4, None)
    """
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return round(100 * float(v), 2)


def metrics_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per arm and bench of a :func:`render_json` report: overall N, Acc@0.5 % with its
    95% bootstrap CI, IoU %, Acc@0.5 % on the seen and unseen domains, and the evaluation version.
    Plain values (a table cell is not Markdown: tags and links have no place there).

    >>> rep = {"checkpoints": [{"label": "sft", "bench_name": "composed", "evaluation": "evaluation@1",
    ...        "metrics": {"all": {"all": {"Acc": 0.5, "IoU": 0.41, "Num": 8}},
    ...                    "seen domain": {"all": {"Acc": 0.75, "IoU": 0.6, "Num": 4}}},
    ...        "cis": {"all": {"lo": 0.25, "hi": 0.75}}}]}
    >>> metrics_table(rep)[0]
    {'bench': 'composed', 'arm': 'CoT-SFT', 'N': 8, 'Acc@0.5 %': 50.0, '95% CI': '[25.00, 75.00]', 'IoU %': 41.0, 'seen Acc %': 75.0, 'unseen Acc %': None, 'evaluation': 'evaluation@1'}
    """
    rows = []
    for c in report.get("checkpoints", []):
        overall = _cell(c["metrics"], "all") or {}
        seen, unseen = _cell(c["metrics"], "seen domain") or {}, _cell(c["metrics"], "unseen domain") or {}
        ci = (c.get("cis") or {}).get("all") or {}
        rows.append({
            "bench": c.get("bench_name", COMPOSED_BENCH), "arm": arm_title(c["label"]), "N": overall.get("Num"),
            "Acc@0.5 %": _rounded_pct(overall.get("Acc")),
            "95% CI": f"[{_pct(ci['lo'])}, {_pct(ci['hi'])}]" if "lo" in ci and "hi" in ci else None,
            "IoU %": _rounded_pct(overall.get("IoU")),
            "seen Acc %": _rounded_pct(seen.get("Acc")), "unseen Acc %": _rounded_pct(unseen.get("Acc")),
            "evaluation": c.get("evaluation"),
        })
    return rows


class VersionRow(BaseModel):
    """One artifact version a run produced or reused, for the run's version index."""

    role: str = Field(description="What the run calls it (its key in reproduce's `artifacts`, or `report`).")
    ref: str = Field(description="Artifact name@version.")
    stage: str = Field(description="Stage that committed it.")
    created_at: str = Field(description="When it was committed (ISO 8601, UTC).")
    location: str = Field(description="Where the version lives in the store (a path or an s3:// URI).")
    new: bool | None = Field(None, description="Committed during this run (False: reused from an earlier "
                             "one; None: unknown).")
    committed_by: str | None = Field(None, description="Name of the flow run that committed it, if known.")
    committed_by_url: str | None = Field(None, description="Link to that flow run in the orchestrator's UI.")


def versions_markdown(rows: list[VersionRow], store: str) -> str:
    """A Markdown index of the versions a run produced: one table row each with its store location
    and a link to the flow run that committed it (reused versions link to the earlier run).

    >>> print(versions_markdown([VersionRow(role="bench", ref="bench@ab12", stage="bench",
    ...       created_at="2026-01-01T00:00:00+00:00", location="s3://b/runs/bench/ab12", new=False,
    ...       committed_by="brave-fox", committed_by_url="http://ui/runs/flow-run/1")], "s3://b/runs"))
    # Artifact versions of this run
    <BLANKLINE>
    Store: `s3://b/runs`. 0 new, 1 reused (committed by an earlier run with the same inputs, config and code).
    <BLANKLINE>
    | role | version | this run | committed (UTC) | by flow run | location |
    |---|---|---|---|---|---|
    | bench | `bench@ab12` | reused | 2026-01-01 00:00:00 | [brave-fox](http://ui/runs/flow-run/1) | `s3://b/runs/bench/ab12` |
    <BLANKLINE>
    """
    new = sum(1 for r in rows if r.new)
    reused = sum(1 for r in rows if r.new is False)
    lines = ["# Artifact versions of this run", "",
             f"Store: {md_code(store)}. {new} new, {reused} reused (committed by an earlier run with the same "
             "inputs, config and code).", "",
             "| role | version | this run | committed (UTC) | by flow run | location |", "|---|---|---|---|---|---|"]
    for r in rows:
        run = (f"[{md_text(r.committed_by or 'flow run')}]({r.committed_by_url})" if r.committed_by_url
               else md_text(r.committed_by or "—"))
        lines.append(f"| {md_text(r.role)} | {md_code(r.ref)} | {({True: 'new', False: 'reused', None: '?'})[r.new]} | "
                     f"{r.created_at[:19].replace('T', ' ')} | {run} | {md_code(r.location)} |")
    return "\n".join(lines) + "\n"
