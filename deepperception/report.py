"""The reproduction report: Acc@0.5 and mean IoU per category, seen / unseen / overall, for
every evaluated checkpoint, each number carrying the artifact versions it came from."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from deepperception.eval.groups import DOMAIN_GROUPS as OVERALL_GROUPS  # all, seen domain, unseen domain


class EvalSummary(BaseModel):
    """One checkpoint's evaluation, with its lineage."""

    label: str = Field(description="base / sft / grpo, or any name for an extra checkpoint.")
    checkpoint: str = Field(description="Checkpoint artifact name@version (or an external path).")
    bench: str = Field(description="Bench artifact name@version.")
    evaluation: str = Field(description="Evaluation artifact name@version holding outputs and predictions.")
    config_hash: str
    code_version: str
    metrics: dict[str, Any] = Field(description="Official metrics.json content.")
    strict: dict[str, Any] = Field(default_factory=dict, description="Strict-parser summary per group.")
    cis: dict[str, Any] = Field(default_factory=dict, description="95% bootstrap CI of Acc per group.")
    extra: dict[str, Any] = Field(default_factory=dict)


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
    return "—" if v is None else f"{100 * float(v):.2f}"


def _ci_text(s: EvalSummary, group: str) -> str:
    ci = s.cis.get(group)
    if not ci:
        return ""
    lo, hi = ci.get("lo"), ci.get("hi")
    return f" [{_pct(lo)}, {_pct(hi)}]" if lo is not None and hi is not None else ""


def render_markdown(summaries: list[EvalSummary], header: dict[str, Any]) -> str:
    lines = ["# DeepPerception reproduction report", ""]
    for k, v in header.items():
        lines.append(f"- **{k}**: `{v}`")
    lines += [
        "",
        "Acc@0.5 is the official KVG-Bench accuracy (IoU ≥ 0.5, official 8-regex parser) and IoU the mean IoU,",
        "both in percent (metrics.json and report.json keep the official fractions). Brackets: 95% bootstrap CI.",
        "",
    ]
    labels = [s.label for s in summaries]
    head = "| group | N | " + " | ".join(f"{l} Acc@0.5 | {l} IoU" for l in labels) + " |"
    sep = "|---|---:|" + "---:|---:|" * len(labels)
    lines += ["## Results", "", head, sep]
    for group in groups_in(summaries):
        cells = [_cell(s.metrics, group) for s in summaries]
        if all(c is None for c in cells):
            continue
        n = next((c.get("Num") for c in cells if c), None)
        row = [group, _fmt(n)]
        for s, c in zip(summaries, cells):
            row += [(_pct(c.get("Acc")) + _ci_text(s, group)) if c else "—", _pct(c.get("IoU")) if c else "—"]
        lines.append("| " + " | ".join(row) + " |")
    if any(s.strict for s in summaries):
        lines += ["", "## Strict scoring (box must be a valid box inside <answer>)", ""]
        lines += ["| checkpoint | strict Acc % | parse rate % | official hits from outside <answer> |", "|---|---:|---:|---:|"]
        for s in summaries:
            st = s.strict.get("all", s.strict)
            lines.append(
                f"| {s.label} | {_pct(st.get('Acc'))} | {_pct(st.get('parse_rate'))} | "
                f"{_fmt(st.get('official_hits_outside_answer'))} |"
            )
    lines += ["", "## Lineage", "", "| checkpoint | checkpoint artifact | bench | evaluation | config hash | code |",
              "|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(
            f"| {s.label} | `{s.checkpoint}` | `{s.bench}` | `{s.evaluation}` | `{s.config_hash}` | `{s.code_version}` |"
        )
    trained = [(s.label, s.extra.get("train") or {}) for s in summaries if s.extra.get("train")]
    if trained:
        lines += ["", "## Training", "", "| checkpoint | steps | runtime s | loss first → last | mean reward first → last |",
                  "|---|---:|---:|---|---|"]
        for label, t in trained:
            rewards = t.get("reward") or []
            reward_txt = f"{rewards[0]:.3f} → {rewards[-1]:.3f}" if rewards else "—"
            loss_txt = (f"{t['train_loss_first']:.4f} → {t['train_loss_last']:.4f}"
                        if t.get("train_loss_first") is not None else "—")
            lines.append(f"| {label} | {_fmt(t.get('steps'))} | {_fmt(t.get('runtime_s'))} | {loss_txt} | {reward_txt} |")
    notes = [f"- {s.label}: {note}" for s in summaries for note in s.extra.get("notes", [])]
    if notes:
        lines += ["", "## Notes", ""] + notes
    return "\n".join(lines) + "\n"


def render_json(summaries: list[EvalSummary], header: dict[str, Any]) -> dict[str, Any]:
    return {"header": header, "checkpoints": [s.model_dump(mode="json") for s in summaries]}
