r"""Markdown that renders the same in the Prefect UI, on GitHub and in any CommonMark viewer.

The Prefect UI's renderer (marked, GFM) turns ``Acc@0.5`` into a mail link and drops ``<answer>``
as an HTML tag, in headings and table cells too. A backslash before ASCII punctuation is
CommonMark's own escape; ``infra/ui/screenshots.py`` checked it in the Prefect UI: ``Acc\@0.5`` and
``\<answer\>`` show as typed, and a code span shows its text verbatim, while HTML entities such
as ``&#64;`` are shown literally there (so they are not used). One small module without imports,
so the evaluation's and the report's versions do not depend on each other through it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ACC", "md_code", "md_text"]

_MD_SPECIAL = frozenset("\\`*_[]<>@|")
ACC = "Acc\\@0.5"  # the metric's name as Markdown text


def md_text(text: Any) -> str:
    """``text`` as literal Markdown text: Markdown/HTML punctuation backslash-escaped, so nothing
    becomes a link, a tag, emphasis or a table cell break.

    >>> md_text("Acc@0.5 inside <answer> | a_b")
    'Acc\\\\@0.5 inside \\\\<answer\\\\> \\\\| a\\\\_b'
    >>> md_text("CoT-SFT+GRPO (r1 prompt)")
    'CoT-SFT+GRPO (r1 prompt)'
    """
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text))


def md_code(text: Any) -> str:
    """``text`` as an inline code span (shown verbatim, ``@`` and tags included); a fence longer
    than any backtick run inside, and ``|`` escaped so a table cell stays one cell (GFM).

    >>> md_code("evaluation@1a2b"), md_code("<answer>"), md_code("a`b")
    ('`evaluation@1a2b`', '`<answer>`', '``a`b``')
    """
    text = str(text)
    run = longest = 0
    for c in text:
        run = run + 1 if c == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")
