"""FGVR: multiple-choice fine-grained recognition (bench format, prompt, answer parser, scorer).

The official FGVR path cannot run (official-code.md §2.10: it calls the grounding inference with a
path string, never increments question ids, references undefined names). What it intended, and
what we keep: the classification template (``prompts.CLASSIFICATION_TEMPLATE``, from
``inference.py``, two spaces after the question; prompt mode ``"fgvr"``), answers read from the
first ``<answer>…</answer>``, a lettered ground truth, accuracy per category. What we define
ourselves (no official data format survives): options are listed one per line as ``A. <option>``
under the question. The training data the authors describe (thunlp/KARL #1) is multiple choice
with 3 same-category distractors, hence 4 options by default.

FGVR bench format (parquet, :data:`FGVR_BENCH_SCHEMA`; built by
``deepperception.engine.datasets.build_fgvr_bench``), one row per question:

==============  ==========================  =====================================================
column          type                        meaning
==============  ==========================  =====================================================
``question_id`` string                      unique id
``question``    string                      full user question: stem + lettered options, i.e.
                                            ``build_question(stem, options)``; inference sends it
                                            through ``prompts.user_text(question, "fgvr")``
``options``     list<string>                the option texts, in letter order (2-26, non-empty)
``image``       struct<bytes, path>         the image (raw encoded bytes), as in KVG-Bench
``answer``      string                      the correct option LETTER (``"A"``…)
``category``    string                      group for per-category accuracy
==============  ==========================  =====================================================

Because ``question_id``/``question``/``image``/``answer``/``category`` match KVG-Bench, the same
resumable ``eval.inference.run_inference(..., prompt_mode="fgvr")`` generates the outputs.

Answer parsing (:func:`parse_choice`), in order, on the first complete ``<answer>`` block:

1. ``letter``: the block starts with an option letter, optionally wrapped/prefixed:
   ``B``, ``B.``, ``(B)``, ``B) Boeing 737``, ``Option B``, ``Answer: B``. A letter beyond the
   number of options is ``unrecognized``.
2. ``option_text``: the block equals one option's text (case/space/punctuation-insensitive), or
   contains exactly one option's text; when several match and one contains all the others
   ("Boeing 737-800" vs "Boeing 737") the longest wins, otherwise ``ambiguous``.
3. Otherwise ``unrecognized``; no ``<answer>`` block is ``no_answer_tag``. Nothing outside the
   answer block is ever used, so a model cannot score by listing every option while thinking.
   A question with no output at all is ``no_output`` (scored wrong).

Output directory of one FGVR scoring (:func:`write_fgvr_report`): ``metrics.json`` (see
:func:`fgvr_metrics_json`) and ``predictions.parquet`` (one row per question, bench order).
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from deepperception.errors import InputDataError
from deepperception.eval.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, group_cis
from deepperception.eval.parsing import answer_spans
from deepperception.prompts import CLASSIFICATION_TEMPLATE, user_text
from deepperception.tables import IMAGE_STRUCT, require_columns

__all__ = ["CLASSIFICATION_TEMPLATE", "FGVR_BENCH_SCHEMA", "LETTERS", "HOWS", "build_question", "fgvr_prompt",
           "format_options", "parse_choice", "official_choice", "check_fgvr_items", "score_fgvr",
           "read_fgvr_bench", "fgvr_metrics_json", "write_fgvr_report", "format_fgvr_table"]

LETTERS = string.ascii_uppercase
STAGE = "eval.fgvr"
# Every value of ``predictions.how``, in report order.
HOWS = ("letter", "option_text", "ambiguous", "unrecognized", "no_answer_tag", "no_output")
FGVR_BENCH_SCHEMA = pa.schema([
    pa.field("question_id", pa.string()),
    pa.field("question", pa.string()),
    pa.field("options", pa.list_(pa.string())),
    pa.field("image", IMAGE_STRUCT),
    pa.field("answer", pa.string()),
    pa.field("category", pa.string()),
])
SCORING_COLUMNS = ("question_id", "category", "options", "answer")
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
METRICS_SCHEMA = "deepperception.fgvr-metrics/v1"

_OFFICIAL_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>")  # evaluate.py ANSWER_PATTERN (single line)
_LETTER_RE = re.compile(r"^(?:(?:the\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:：]?\s*)?[(\[]?([A-Za-z])(?:[)\].:：,]|\s|$)",
                        re.IGNORECASE)


def format_options(options: Sequence[str]) -> str:
    """Options one per line, lettered.

    >>> print(format_options(["Boeing 737", "Airbus A320"]))
    A. Boeing 737
    B. Airbus A320
    """
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"need 2-{len(LETTERS)} options, got {len(options)}")
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def build_question(question: str, options: Sequence[str]) -> str:
    """Question followed by its lettered options.

    >>> build_question("Which aircraft is this?", ["Boeing 737", "Airbus A320"])
    'Which aircraft is this?\\nA. Boeing 737\\nB. Airbus A320'
    """
    return f"{question}\n{format_options(options)}"


def fgvr_prompt(question: str, options: Sequence[str]) -> str:
    """The user text sent with the image (official classification template).

    >>> fgvr_prompt("Which?", ["x", "y"]).endswith("B. y  Output the thinking process in <think> </think> and final answer in <answer> </answer> tags.")
    True
    >>> fgvr_prompt("Which?", ["x", "y"]) == CLASSIFICATION_TEMPLATE.format(Question=build_question("Which?", ["x", "y"]))
    True
    """
    return user_text(build_question(question, options), "fgvr")


def _norm(s: str) -> str:
    s = re.sub(r"<[^<>]{0,40}>", " ", s)  # stray markup such as <strong>
    s = re.sub(r"\s+", " ", s.casefold()).strip()
    return s.strip(string.punctuation + " ")


@dataclass(frozen=True)
class Choice:
    """``letter`` is set iff ``how`` is ``letter`` or ``option_text``."""

    letter: str | None
    how: str


def parse_choice(text: str, options: Sequence[str]) -> Choice:
    """The chosen option letter, or why there is none.

    >>> opts = ["Boeing 737", "Boeing 737-800", "Airbus A320", "ATR 72"]
    >>> parse_choice("<think>A or C?</think><answer>C</answer>", opts)
    Choice(letter='C', how='letter')
    >>> parse_choice("<answer>(B) Boeing 737-800</answer>", opts)
    Choice(letter='B', how='letter')
    >>> parse_choice("<answer>Answer: d.</answer>", opts)
    Choice(letter='D', how='letter')
    >>> parse_choice("<answer>It is a boeing 737-800.</answer>", opts)
    Choice(letter='B', how='option_text')
    >>> parse_choice("<answer>A Boeing 737-800.</answer>", opts)
    Choice(letter='B', how='option_text')
    >>> parse_choice("<answer>Airbus A320 or ATR 72</answer>", opts)
    Choice(letter=None, how='ambiguous')
    >>> parse_choice("<answer>E</answer>", opts)
    Choice(letter=None, how='unrecognized')
    >>> parse_choice("<think>C</think>", opts)
    Choice(letter=None, how='no_answer_tag')
    """
    spans = answer_spans(text)  # linear; ANSWER_BLOCK_RE.search re-scans from every unclosed tag
    if not spans:
        return Choice(None, "no_answer_tag")
    content = text[spans[0][0]:spans[0][1]].strip()
    lm = _LETTER_RE.match(content)
    if lm is not None:
        letter = lm.group(1).upper()
        rest = content[lm.end():].strip()
        # "A Boeing ..." / "I think ..." start with a word, not a choice (unless the rest names it).
        bare = content[lm.start(1) + 1 : lm.start(1) + 2].isspace() and not content[: lm.start(1)].endswith(("(", "["))
        is_word = bare and bool(rest) and letter in "AI"
        idx = LETTERS.index(letter)
        if not is_word or (idx < len(options) and _norm(rest) == _norm(options[idx])):
            return Choice(letter, "letter") if idx < len(options) else Choice(None, "unrecognized")
    norm = _norm(content)
    normed = [_norm(o) for o in options]
    exact = [i for i, o in enumerate(normed) if o and o == norm]
    if len(exact) == 1:
        return Choice(LETTERS[exact[0]], "option_text")
    hits = [i for i, o in enumerate(normed) if o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", norm)]
    if not hits:
        return Choice(None, "unrecognized")
    longest = max(hits, key=lambda i: len(normed[i]))
    if all(normed[i] in normed[longest] for i in hits):
        return Choice(LETTERS[longest], "option_text")
    return Choice(None, "ambiguous")


def first_single_line_answer(text: str) -> str | None:
    """``_OFFICIAL_ANSWER_RE.findall(text)[0]`` (or ``None``) in linear time.

    The regex re-scans a line from every ``<answer>`` that has no ``</answer>`` after it on that
    line (quadratic on many unclosed tags). Its first hit is the first ``<answer>`` whose line
    still holds a ``</answer>`` after it, with the body ending at the first one; when the first
    tag of a line has none, no later tag on that line has one either, so skip to the next line.

    >>> first_single_line_answer("<answer>a\\n<answer>b</answer><answer>c</answer>")
    'b'
    >>> first_single_line_answer("<answer>a</answer") is None
    True
    """
    pos = 0
    while (start := text.find("<answer>", pos)) >= 0:
        body = start + len("<answer>")
        line_end = text.find("\n", body)
        line_end = len(text) if line_end < 0 else line_end
        close = text.find("</answer>", body, line_end)
        if close >= 0:
            return text[body:close]
        pos = line_end + 1
    return None


def official_choice(text: str) -> str | None:
    """``evaluate.get_choice`` verbatim: first single-line answer, stripped, cut at the first '.'.

    >>> official_choice("<answer> B. Boeing 737 </answer>")
    'B'
    >>> official_choice("<answer>\\nB\\n</answer>") is None
    True
    """
    first = first_single_line_answer(text)
    if first is not None:
        choice = first.strip()
        if len(choice) > 1:
            choice = choice.split(".")[0]
        return choice
    return None


def check_fgvr_items(items: pd.DataFrame | pa.Table, *, artifact: str | None = None) -> list[list[str]]:
    """Validate FGVR items (the bench format above) and return the options per row.

    Needs ``question_id`` (unique), ``category``, ``options`` (>= 2 non-empty, distinct strings) and
    ``answer`` (a letter within the options). When a ``question`` column is present, each question
    must end with its lettered options (``build_question``), so the model sees what is scored.
    Errors are :class:`InputDataError` naming the row and field.

    >>> check_fgvr_items(pd.DataFrame({"question_id": ["q"], "category": ["c"], "options": [["x", "y"]],
    ...                                "answer": ["B"], "question": ["Which?\\nA. x\\nB. y"]}))
    [['x', 'y']]
    >>> check_fgvr_items(pd.DataFrame({"question_id": ["q"], "category": ["c"], "options": [["x", "y"]],
    ...                                "answer": ["C"]}))
    Traceback (most recent call last):
    ...
    deepperception.errors.InputDataError: [stage=eval.fgvr row=0 field=answer] row 0 (question_id='q'): answer must be one of ['A', 'B'], got 'C'
    """
    df = items.to_pandas() if isinstance(items, pa.Table) else items.reset_index(drop=True)
    require_columns(df, SCORING_COLUMNS, stage=STAGE, artifact=artifact)
    qids = df["question_id"].tolist()
    for i, q in enumerate(qids):
        if not isinstance(q, str) or not q:
            raise InputDataError(f"row {i}: question_id must be a non-empty string, got {q!r}", stage=STAGE,
                                 artifact=artifact, row=i, field="question_id")
    dup = df["question_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup).tolist()
        raise InputDataError(f"duplicate question_id in rows {rows[:10]}", stage=STAGE, artifact=artifact,
                             row=rows[0], field="question_id")
    questions = df["question"].tolist() if "question" in df.columns else [None] * len(qids)
    opts_list: list[list[str]] = []
    for i, (opts, ans, question) in enumerate(zip(df["options"].tolist(), df["answer"].tolist(), questions)):
        opts = list(opts) if opts is not None else []
        if len(opts) < 2 or not all(isinstance(o, str) and o.strip() for o in opts):
            raise InputDataError(f"row {i} (question_id={qids[i]!r}): need >= 2 non-empty string options, got {opts!r}",
                                 stage=STAGE, artifact=artifact, row=i, field="options")
        if len(opts) > len(LETTERS) or len({_norm(o) for o in opts}) != len(opts):
            raise InputDataError(f"row {i} (question_id={qids[i]!r}): options must be at most {len(LETTERS)} "
                                 f"and distinct, got {opts!r}", stage=STAGE, artifact=artifact, row=i, field="options")
        if not (isinstance(ans, str) and len(ans) == 1 and ans in LETTERS[: len(opts)]):
            raise InputDataError(f"row {i} (question_id={qids[i]!r}): answer must be one of "
                                 f"{list(LETTERS[: len(opts)])}, got {ans!r}", stage=STAGE, artifact=artifact,
                                 row=i, field="answer")
        if "question" in df.columns and not (isinstance(question, str) and question.endswith("\n" + format_options(opts))):
            raise InputDataError(f"row {i} (question_id={qids[i]!r}): question does not end with its lettered "
                                 "options (build it with build_question)", stage=STAGE, artifact=artifact,
                                 row=i, field="question")
        opts_list.append(opts)
    return opts_list


@dataclass
class FgvrResult:
    """``metrics``: ``{"all": {...}, <category>: {...}}`` with ``Acc`` (fraction), ``Num``,
    ``parse_rate`` and ``official_Acc`` (the intended official rule: :func:`official_choice` ==
    GT letter); ``cis``: bootstrap CI of ``Acc`` per group; ``predictions``: one row per item."""

    metrics: dict[str, dict[str, Any]]
    predictions: pd.DataFrame
    cis: dict[str, dict[str, Any]]
    num_missing: int


def score_fgvr(
    items: pd.DataFrame | pa.Table,
    outputs: Mapping[str, str],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    artifact: str | None = None,
) -> FgvrResult:
    """Score multiple-choice answers. ``items`` needs ``question_id``, ``category``, ``options``
    (list of strings) and ``answer`` (the correct letter). Questions without output count as
    wrong (``num_missing``); outputs for unknown ids are an error."""
    df = items.to_pandas() if isinstance(items, pa.Table) else items.reset_index(drop=True)
    opts_list = check_fgvr_items(df, artifact=artifact)
    qids = df["question_id"].tolist()
    qset = set(qids)
    extra = [q for q in outputs if q not in qset]
    if extra:
        raise InputDataError(f"{len(extra)} output(s) for unknown question ids, e.g. {extra[:10]}", stage=STAGE,
                             artifact=artifact, row=str(extra[0]), field="question_id")

    gts = df["answer"].tolist()
    chosen: list[str | None] = []
    hows: list[str] = []
    official: list[bool] = []
    for q, opts, gt in zip(qids, opts_list, gts):
        text = outputs.get(q)
        if text is None:
            chosen.append(None)
            hows.append("no_output")
            official.append(False)
            continue
        c = parse_choice(text, opts)
        chosen.append(c.letter)
        hows.append(c.how)
        official.append(official_choice(text) == gt)
    correct = np.array([c is not None and c == g for c, g in zip(chosen, gts)], dtype=bool)
    parsed = np.array([c is not None for c in chosen], dtype=bool)
    off = np.array(official, dtype=bool)

    cats = df["category"].astype(str).tolist()
    groups: dict[str, np.ndarray] = {"all": np.arange(len(qids))}
    for c in dict.fromkeys(cats):
        groups[c] = np.flatnonzero(np.asarray(cats, dtype=object) == c)
    metrics = {
        g: {"Acc": float(correct[idx].mean()), "Num": int(idx.size), "parse_rate": float(parsed[idx].mean()),
            "official_Acc": float(off[idx].mean())}
        for g, idx in groups.items() if idx.size
    }
    cis = group_cis(correct.astype(np.float64), {g: i for g, i in groups.items() if i.size},
                    n_resamples=n_resamples, confidence=confidence, seed=seed)
    predictions = pd.DataFrame({
        "question_id": qids, "category": cats, "answer": gts, "choice": chosen, "how": hows,
        "correct": correct, "official_correct": off, "has_output": [q in outputs for q in qids],
    })
    return FgvrResult(metrics=metrics, predictions=predictions, cis=cis,
                      num_missing=int(sum(q not in outputs for q in qids)))


# ---------------------------------------------------------------------------------------------
# files

def read_fgvr_bench(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """Read an FGVR bench parquet, checking that the requested columns (default: all of
    :data:`FGVR_BENCH_SCHEMA`) exist with usable types. Pass ``columns=SCORING_COLUMNS`` to skip
    the image bytes. Row-level checks are :func:`check_fgvr_items`'s."""
    p = str(path)
    stage = "eval.read_fgvr_bench"
    try:
        schema = pq.read_schema(p)
    except (OSError, pa.ArrowException) as e:
        raise InputDataError(f"cannot read FGVR bench parquet: {e}", stage=stage, artifact=p) from e
    wanted = list(FGVR_BENCH_SCHEMA.names if columns is None else columns)
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise InputDataError(f"FGVR bench lacks column(s) {missing}; has {schema.names}", stage=stage, artifact=p,
                             field=missing[0])
    if "options" in wanted:
        t = schema.field("options").type
        if not ((pa.types.is_list(t) or pa.types.is_large_list(t))
                and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type))):
            raise InputDataError(f"options must be list<string>, got {t}", stage=stage, artifact=p, field="options")
    if "image" in wanted:
        t = schema.field("image").type
        if not (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0):
            raise InputDataError(f"image must be struct<bytes: binary, path: string>, got {t}", stage=stage,
                                 artifact=p, field="image")
    return pq.read_table(p, columns=wanted)


def fgvr_metrics_json(result: FgvrResult) -> dict[str, Any]:
    """The ``metrics.json`` object::

        {"schema": "deepperception.fgvr-metrics/v1", "num_questions": N, "num_missing": k,
         "groups": {"all" | <category>: {"Acc", "Num", "parse_rate", "official_Acc",
                                          "ci": {"estimate", "lo", "hi", "confidence", ...},
                                          "how": {<parse method>: count, ...}}}}

    Fractions, not percentages; ``how`` lists every method of :data:`HOWS` (zeros included).
    """
    pred = result.predictions
    groups: dict[str, Any] = {}
    for g, m in result.metrics.items():
        hows = pred["how"] if g == "all" else pred.loc[pred["category"] == g, "how"]
        counts = hows.value_counts()
        groups[g] = {**m, "ci": result.cis[g], "how": {h: int(counts.get(h, 0)) for h in HOWS}}
    return {"schema": METRICS_SCHEMA, "num_questions": int(len(pred)), "num_missing": result.num_missing,
            "groups": groups}


def write_fgvr_report(result: FgvrResult, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``metrics.json`` (:func:`fgvr_metrics_json`, indented) and ``predictions.parquet``
    into ``out_dir`` (created if needed); returns the metrics path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = result.predictions.astype({"choice": "string"})
    from deepperception.fileio import atomic_write_json, atomic_write_parquet

    atomic_write_parquet(out / PREDICTIONS_FILE, pa.Table.from_pandas(pred, preserve_index=False))
    path = out / METRICS_FILE
    atomic_write_json(path, fgvr_metrics_json(result))
    return path


def format_fgvr_table(result: FgvrResult) -> str:
    """Human-readable per-group table (percentages; ``metrics.json`` keeps fractions)."""
    head = f"{'group':<15}{'N':>6}{'Acc':>8}  {'95% CI':<17}{'official':>9}{'parsed':>8}"
    lines = [head, "-" * len(head)]
    for g, m in result.metrics.items():
        ci = result.cis[g]
        lines.append(f"{g:<15}{m['Num']:>6}{100 * m['Acc']:8.2f}  [{100 * ci['lo']:6.2f},{100 * ci['hi']:6.2f}]  "
                     f"{100 * m['official_Acc']:9.2f}{100 * m['parse_rate']:8.2f}")
    lines.append("Acc/official/parsed in %; official = the intended official rule (first answer, cut at '.').")
    return "\n".join(lines)
