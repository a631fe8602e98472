"""The report's and the evaluation summary's Markdown renders as typed in the Prefect UI: no mail
links out of ``Acc@0.5``, no tags swallowed (``<answer>``), labels that cannot break a table.

Rendered with markdown-it-py in GFM-like mode with linkify (what turns a bare ``x@y.z`` into a link)
where it is installed, else checked on the raw text; the real UI is checked by
tests/infra/test_screenshots.py."""

from __future__ import annotations

import re

import pytest

from deepperception.eval.publish import markdown_summary
from deepperception.markdown import md_code, md_text
from deepperception.report import EvalSummary, VersionRow, metrics_table, render_json, render_markdown, versions_markdown

RAW_AUTOLINK = re.compile(r"(?<![\\\w])[A-Za-z0-9._+-]+@[A-Za-z0-9-]+\.[A-Za-z0-9]")  # GFM's email autolink start
RAW_TAG = re.compile(r"(?<![\\`])<(/?[A-Za-z][\w-]*)[^>`]*>(?![^`\n]*`)")


def _summary(label: str, acc: float, bench_name: str = "composed") -> EvalSummary:
    metrics = {g: {"all": {"Acc": acc, "IoU": 0.4, "Num": 10}} for g in ("all", "seen domain", "unseen domain",
                                                                          "Boeing 737-800 <v2>")}
    return EvalSummary(label=label, checkpoint=f"{label}-checkpoint@1", bench="bench@2", bench_name=bench_name,
                       evaluation=f"evaluation@{label}", config_hash="c", code_version="0.1.0", metrics=metrics,
                       strict={"all": {"Acc": acc / 2, "parse_rate": 0.9, "official_hits_outside_answer": 1}},
                       cis={"all": {"lo": acc - 0.1, "hi": acc + 0.1}})


def _outside_code(md: str) -> str:
    return re.sub(r"`+[^`\n]*`+", "", md)


def _html(md: str) -> str | None:
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return None
    try:
        return MarkdownIt("gfm-like").render(md)  # linkify needs linkify-it-py
    except Exception:  # noqa: BLE001 - linkify-it-py missing
        return MarkdownIt("commonmark").enable("table").render(md)


@pytest.fixture
def report_md() -> str:
    return render_markdown([_summary("base (r1 prompt)", 0.3), _summary("sft", 0.5), _summary("a_b|c", 0.4)],
                           {"profile": "toy", "bench": "bench@2", "store": "s3://bucket/runs"})


def test_no_bare_email_like_text_or_raw_tags_outside_code(report_md):
    text = _outside_code(report_md)
    assert "Acc\\@0.5" in report_md
    assert not RAW_AUTOLINK.search(text), RAW_AUTOLINK.search(text)
    assert not RAW_TAG.search(text), RAW_TAG.search(text)
    assert "## Strict scoring (box must be a valid box inside `<answer>`)" in report_md
    assert "Boeing 737-800 \\<v2\\>" in report_md  # a category name with a tag-like part
    assert "a\\_b\\|c" in report_md  # a label cannot end a table cell early


def test_rendered_html_has_no_mail_link_and_shows_the_tags(report_md):
    html = _html(report_md)
    if html is None:
        pytest.skip("markdown-it-py is not installed")
    assert "mailto:" not in html
    assert "Acc@0.5" in html
    assert "&lt;answer&gt;" in html and "<answer>" not in html
    # Every table row has as many cells as its header (no label split a row).
    for table in re.findall(r"<table>.*?</table>", html, flags=re.S):
        head = len(re.findall(r"<th[ >]", table.split("</thead>")[0]))
        for row in re.findall(r"<tr>(.*?)</tr>", table.split("</thead>")[1], flags=re.S):
            assert len(re.findall(r"<td[ >]", row)) == head


def test_evaluation_summary_escapes_its_metric_and_group_names():
    metrics = {"all": {"all": {"Acc": 0.5, "IoU": 0.4, "Num": 8}}, "a<b>": {"all": {"Acc": 0.5, "IoU": 0.4, "Num": 8}}}
    md = markdown_summary(metrics, {"all": {"official": {"lo": 0.2, "hi": 0.7}}}, {},
                          {"checkpoint": "sft-checkpoint@1", "user@host.name": "x"})
    text = _outside_code(md)
    assert "Acc\\@0.5 %" in md and "a\\<b\\>" in md and "- **checkpoint**: `sft-checkpoint@1`" in md
    assert not RAW_AUTOLINK.search(text) and not RAW_TAG.search(text)


def test_md_helpers_round_trip_through_a_commonmark_renderer():
    html = _html(md_text("x@y.io <b> *no* [link](u)") + " " + md_code("a|b@c.de"))
    if html is None:
        pytest.skip("markdown-it-py is not installed")
    assert "x@y.io &lt;b&gt; *no* [link](u)" in html and "<code>a\\|b@c.de</code>" in html
    assert "<a " not in html and "<em>" not in html


def test_metrics_table_and_version_index_from_a_report():
    report = render_json([_summary("sft", 0.5), _summary("grpo", 0.25, "kvg-bench")], {"profile": "toy"})
    rows = metrics_table(report)
    assert [(r["bench"], r["arm"], r["Acc@0.5 %"], r["95% CI"]) for r in rows] == [
        ("composed", "CoT-SFT", 50.0, "[40.00, 60.00]"), ("kvg-bench", "CoT-SFT+GRPO", 25.0, "[15.00, 35.00]")]
    assert all(set(r) >= {"N", "IoU %", "seen Acc %", "unseen Acc %", "evaluation"} for r in rows)
    md = versions_markdown([
        VersionRow(role="sft_checkpoint", ref="sft-checkpoint@1", stage="sft", created_at="2026-01-01T00:00:00+00:00",
                   location="/store/sft-checkpoint/1", new=True, committed_by="train-sft[cfg 1]",
                   committed_by_url="http://127.0.0.1:4200/runs/flow-run/abc"),
        VersionRow(role="bench", ref="bench@2", stage="bench", created_at="2025-12-31T00:00:00+00:00",
                   location="/store/bench/2", new=False)], "/store")
    assert "1 new, 1 reused" in md
    assert "| sft\\_checkpoint | `sft-checkpoint@1` | new | 2026-01-01 00:00:00 | " \
           "[train-sft\\[cfg 1\\]](http://127.0.0.1:4200/runs/flow-run/abc) | `/store/sft-checkpoint/1` |" in md
    assert "| bench | `bench@2` | reused | 2025-12-31 00:00:00 | — | `/store/bench/2` |" in md
