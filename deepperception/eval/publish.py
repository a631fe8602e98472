"""Human-facing views of a scored run: a per-domain bar chart (PNG) and a Markdown summary
(escaped with :mod:`deepperception.markdown`, so the Prefect UI shows ``Acc@0.5`` and category
names as typed)."""

from __future__ import annotations

import base64
import io
from typing import Any

from deepperception.markdown import ACC, md_code, md_text


def bar_chart_png(metrics: dict[str, Any], cis: dict[str, Any] | None = None, title: str = "") -> bytes:
    """Acc@0.5 per group (overall, seen, unseen, each category) with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")  # headless: workers have no display
    import matplotlib.pyplot as plt

    groups = list(metrics)
    acc = [100 * metrics[g]["all"]["Acc"] for g in groups]
    lo, hi = [], []
    for g, a in zip(groups, acc):
        ci = (cis or {}).get(g, {}).get("official") or (cis or {}).get(g)
        if ci and "lo" in ci:
            lo.append(max(0.0, a - 100 * ci["lo"]))
            hi.append(max(0.0, 100 * ci["hi"] - a))
        else:
            lo.append(0.0)
            hi.append(0.0)
    from deepperception.eval.groups import DOMAIN_GROUPS

    colors = ["#444444" if g in DOMAIN_GROUPS else "#4C78A8" for g in groups]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups) + 2), 3.6), dpi=100)
    ax.bar(range(len(groups)), acc, yerr=[lo, hi], color=colors, capsize=3)
    ax.set_xticks(range(len(groups)), groups, rotation=40, ha="right")
    ax.set_ylabel("Acc@0.5 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "KVG accuracy per group (95% bootstrap CI)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def markdown_summary(metrics: dict[str, Any], cis: dict[str, Any], strict: dict[str, Any],
                     lineage: dict[str, str], chart_png: bytes | None = None) -> str:
    """Markdown with the chart inline (data URI), the metrics table with CIs and the lineage."""
    lines = ["# KVG-Bench evaluation", ""]
    lines += [f"- **{md_text(k)}**: {md_code(v)}" for k, v in lineage.items()]
    lines.append("")
    if chart_png:
        lines += [f"![accuracy per group](data:image/png;base64,{base64.b64encode(chart_png).decode()})", ""]
    lines += [f"| group | N | {ACC} % | 95% CI | IoU % | strict Acc % | parse rate % |",
              "|---|---:|---:|---|---:|---:|---:|"]
    for g, m in metrics.items():
        a = m["all"]
        ci = cis.get(g, {}).get("official", {})
        st = strict.get(g, {})
        ci_txt = f"[{100 * ci['lo']:.2f}, {100 * ci['hi']:.2f}]" if ci else "—"
        lines.append(f"| {md_text(g)} | {a['Num']} | {100 * a['Acc']:.2f} | {ci_txt} | {100 * a['IoU']:.2f} | "
                     f"{100 * st.get('Acc', 0.0):.2f} | {100 * st.get('parse_rate', 0.0):.2f} |")
    return "\n".join(lines) + "\n"
