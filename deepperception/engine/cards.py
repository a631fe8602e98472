"""Data cards: what a dataset version contains, where it came from and what was thrown away.

Why: a training set of 25K model-labeled, model-explained items is only trustworthy if a reader
can see its make-up (entities, k, layouts, box sizes), how good the labeler was against the
datasets' own boxes, which models and prompts made it, what it cost, and what was dropped and why.

Statistics are accumulated batch by batch (:class:`DataCardStats`, ``add_*`` methods, bounded
memory: counters per category/entity/reason and fixed-bin histograms, never the rows), can be
merged across shards (:meth:`DataCardStats.merge`), and rendered with matplotlib (``Agg``, through
``matplotlib.figure.Figure`` without pyplot, so it is thread-safe inside task runners) into
Markdown plus PNG figures: :func:`render_card` references the figures as ``figures/<key>`` (``key``
is the file name, e.g. ``categories.png``), :func:`render_card_for_prefect` inlines them as
base64 data URLs for a Prefect Markdown artifact.

``meta`` keys read by the renderers (all optional):

* ``dataset`` (title), ``version``, ``created_at`` (printed as given);
* ``labeler``, ``knowledge``, ``teacher`` and any role under ``models`` (``{role: {...}}``), each
  ``{"model": str, "backend": str, "prompt_hash": str, "usage": {"requests", "failed",
  "prompt_tokens", "completion_tokens", "cost_usd"}, "price_per_million": {"prompt", "completion"}}``;
  ``cost_usd`` is computed from ``price_per_million`` (USD per 1M tokens) when absent;
* ``prompt_hashes``: ``{name: hash}`` of other prompts (templates, knowledge cards);
* ``drops``: ``{stage: {reason: count}}`` merged into the dropped-items table;
* ``tables``: ``{name: rows}`` (e.g. sft, grpo, bench row counts);
* ``contamination``: the dict of ``contamination.contamination_summary``;
* ``notes``: a string or a list of strings.
"""

from __future__ import annotations

import base64
import io
import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepperception.errors import InputDataError

FIGURE_DIR = "figures"
N_BINS = 20
EDGES = np.linspace(0.0, 1.0, N_BINS + 1)
TOP_ENTITIES = 25
MODEL_ROLES = ("labeler", "knowledge", "teacher")


def _hist(values: Iterable[float]) -> np.ndarray:
    """Counts of ``values`` in ``N_BINS`` equal bins over [0, 1] (1.0 goes into the last bin).

    >>> _hist([0.0, 0.5, 1.0, 0.99])[[0, 10, 19]].tolist()
    [1, 1, 2]
    """
    v = np.clip(np.asarray(list(values), dtype=float), 0.0, 1.0)
    return np.histogram(v, bins=EDGES)[0].astype(np.int64)


def _area_share(box: Sequence[float]) -> float:
    """Area of a 0-1000 box as a share of the image.

    >>> _area_share([0, 0, 500, 500])
    0.25
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    return max(0.0, x2 - x1) * max(0.0, y2 - y1) / 1e6


def _col(batch: pa.RecordBatch | pa.Table, name: str) -> list | None:
    return batch.column(name).to_pylist() if name in batch.schema.names else None


def _need(batch: pa.RecordBatch | pa.Table, names: Sequence[str], stage: str) -> None:
    missing = [n for n in names if n not in batch.schema.names]
    if missing:
        raise InputDataError(f"missing column(s) {missing}; batch has {batch.schema.names}", stage=stage, field=missing[0])


def _reason_column(batch: pa.RecordBatch | pa.Table) -> str | None:
    names = batch.schema.names
    if "reason" in names:
        return "reason"
    return next((n for n in names if n.endswith("_reason")), None)


def _zeros() -> np.ndarray:
    return np.zeros(N_BINS, np.int64)


@dataclass
class DataCardStats:
    """Running counts for one dataset version. Every field is a Counter, an int or a histogram
    over ``EDGES``, so shards' stats add up (:meth:`merge`)."""

    images_by_category: Counter = field(default_factory=Counter)
    images_by_entity: Counter = field(default_factory=Counter)
    entity_category: dict = field(default_factory=dict)
    entity_name: dict = field(default_factory=dict)
    images_by_split_pool: Counter = field(default_factory=Counter)
    images_by_source: Counter = field(default_factory=Counter)
    images_with_dataset_box: int = 0
    labels_total: int = 0
    labels_with_box: int = 0
    label_failures: Counter = field(default_factory=Counter)
    label_backends: Counter = field(default_factory=Counter)
    box_sources: Counter = field(default_factory=Counter)
    photo_box_area: np.ndarray = field(default_factory=_zeros)
    iou_hist: np.ndarray = field(default_factory=_zeros)
    iou_n: int = 0
    iou_ge_05: int = 0
    composites_by_category: Counter = field(default_factory=Counter)
    k_counts: Counter = field(default_factory=Counter)
    layout_counts: Counter = field(default_factory=Counter)
    composite_box_area: np.ndarray = field(default_factory=_zeros)
    entity_appearances: Counter = field(default_factory=Counter)
    cot_total: int = 0
    cot_ok: int = 0
    cot_by_category: Counter = field(default_factory=Counter)
    cot_failures: Counter = field(default_factory=Counter)
    cot_chars: int = 0
    cot_teachers: Counter = field(default_factory=Counter)
    rejections: Counter = field(default_factory=Counter)  # (stage, reason) -> n

    # -- accumulation -------------------------------------------------------------------------
    def add_images(self, batch: pa.RecordBatch | pa.Table) -> None:
        """An images table batch (``collection.IMAGES_SCHEMA``)."""
        _need(batch, ["entity_id", "category"], "card")
        ents, cats = _col(batch, "entity_id"), _col(batch, "category")
        names = _col(batch, "name") or [None] * len(ents)
        splits, pools = _col(batch, "split"), _col(batch, "pool")
        for e, c, n in zip(ents, cats, names):
            self.images_by_category[c] += 1
            self.images_by_entity[e] += 1
            self.entity_category.setdefault(e, c)
            if n is not None:
                self.entity_name.setdefault(e, n)
        if splits is not None and pools is not None:
            self.images_by_split_pool.update(zip(splits, pools))
        if (src := _col(batch, "source")) is not None:
            self.images_by_source.update(src)
        if (boxes := _col(batch, "source_box_px")) is not None:
            self.images_with_dataset_box += sum(b is not None for b in boxes)

    def add_labels(self, batch: pa.RecordBatch | pa.Table | None = None, *, ious: Iterable[float] | None = None,
                   iou_histogram: Mapping[str, Sequence[float]] | None = None) -> None:
        """A labeled images batch (``box`` 0-1000, null on failure; ``label_reason`` or
        ``label_error``; ``label_backend``; ``box_source``; a ``label_iou`` column, if present, is
        the agreement with the dataset's box) and/or labeler agreement given directly: ``ious``
        (values in 0..1) or ``iou_histogram``: either ``{"edges": [...], "counts": [...]}`` as
        ``numpy.histogram`` returns them (edges multiples of 0.05 including 0.5), or the labeling
        stage's ``agreement_stats`` dict ``{"compared", "agreeing", "histogram": [equal bins over
        0..1], "threshold"}`` (its ``agreeing`` is used when the threshold is 0.5)."""
        if batch is not None:
            _need(batch, ["box"], "card")
            bxs = _col(batch, "box")
            reasons = _col(batch, "label_reason")
            errors = _col(batch, "label_error")
            self.labels_total += len(bxs)
            areas = []
            for i, b in enumerate(bxs):
                if b is not None:
                    self.labels_with_box += 1
                    areas.append(_area_share(b))
                else:
                    r = (reasons[i] if reasons else None) or ("label_error" if errors and errors[i] else "no_box")
                    self.label_failures[r] += 1
            self.photo_box_area += _hist(areas)
            if (be := _col(batch, "label_backend")) is not None:
                self.label_backends.update(be)
            if (bs := _col(batch, "box_source")) is not None:
                self.box_sources.update(v for v in bs if v is not None)
            if (col := _col(batch, "label_iou")) is not None:
                self._add_ious([v for v in col if v is not None])
        if ious is not None:
            self._add_ious(list(ious))
        if iou_histogram is not None:
            self._add_iou_histogram(iou_histogram)

    def _add_ious(self, values: list[float]) -> None:
        arr = np.asarray(values, dtype=float)
        if arr.size and (np.isnan(arr).any() or arr.min() < 0 or arr.max() > 1):
            raise InputDataError("IoU values must be within 0..1", stage="card", field="ious")
        self.iou_hist += _hist(arr)
        self.iou_n += int(arr.size)
        self.iou_ge_05 += int((arr >= 0.5).sum())

    def _add_iou_histogram(self, h: Mapping[str, Any]) -> None:
        if "histogram" in h and "edges" not in h:  # labeling.agreement_stats
            counts = list(h["histogram"])
            before = self.iou_ge_05
            self._add_iou_histogram({"edges": np.linspace(0, 1, len(counts) + 1).tolist(), "counts": counts})
            if h.get("threshold") == 0.5 and h.get("agreeing") is not None:
                self.iou_ge_05 = before + int(h["agreeing"])
            return
        try:
            edges = np.asarray(h["edges"], dtype=float)
            counts = np.asarray(h["counts"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputDataError(f"iou_histogram must be {{'edges': [...], 'counts': [...]}} ({exc})", stage="card", field="iou_histogram") from None
        pos = np.round(edges * N_BINS).astype(np.int64)
        ok = (len(edges) == len(counts) + 1 and len(edges) >= 2 and np.allclose(pos / N_BINS, edges)
              and np.all(np.diff(pos) > 0) and pos[0] >= 0 and pos[-1] <= N_BINS and N_BINS // 2 in pos and (counts >= 0).all())
        if not ok:
            raise InputDataError(f"iou_histogram edges must be increasing multiples of {1 / N_BINS} within 0..1 including 0.5, "
                                 f"one more than the counts; got edges {edges.tolist()} for {len(counts)} counts",
                                 stage="card", field="iou_histogram")
        for lo, n in zip(pos[:-1], counts):
            self.iou_hist[lo] += n  # a coarser bin is counted in the fine bin at its lower edge
            self.iou_n += int(n)
            if lo >= N_BINS // 2:
                self.iou_ge_05 += int(n)

    def add_composites(self, batch: pa.RecordBatch | pa.Table) -> None:
        """A composites batch (``composition.COMPOSITES_SCHEMA``)."""
        _need(batch, ["category", "entities"], "card")
        ids = _col(batch, "composite_id") or list(range(batch.num_rows))
        layouts = _col(batch, "layout") or [None] * batch.num_rows
        areas = []
        for cid, cat, lay, ents in zip(ids, _col(batch, "category"), layouts, _col(batch, "entities")):
            try:
                items = json.loads(ents)
            except (TypeError, json.JSONDecodeError) as exc:
                raise InputDataError(f"entities is not JSON ({exc})", stage="card", row=cid, field="entities") from None
            self.composites_by_category[cat] += 1
            self.k_counts[len(items)] += 1
            if lay is not None:
                self.layout_counts[lay] += 1
            for it in items:
                if it.get("box") is not None:
                    areas.append(_area_share(it["box"]))
                if it.get("entity_id") is not None:
                    self.entity_appearances[it["entity_id"]] += 1
        self.composite_box_area += _hist(areas)

    def add_cot(self, batch: pa.RecordBatch | pa.Table) -> None:
        """A distilled CoT batch (``distillation.COT_SCHEMA``: ``error``, ``error_reason``)."""
        _need(batch, ["cot"], "card")
        cots = _col(batch, "cot")
        errs = _col(batch, "error") or [None] * len(cots)
        reasons = _col(batch, "error_reason") or [None] * len(cots)
        cats = _col(batch, "category") or [None] * len(cots)
        self.cot_total += len(cots)
        for c, e, r, cat in zip(cots, errs, reasons, cats):
            if e is None and c:
                self.cot_ok += 1
                self.cot_chars += len(c)
                if cat is not None:
                    self.cot_by_category[cat] += 1
            else:
                self.cot_failures[r or ("teacher_error" if e else "empty_cot")] += 1
        if (tb := _col(batch, "teacher_backend")) is not None:
            self.cot_teachers.update(tb)

    def add_rejections(self, batch: pa.RecordBatch | pa.Table, stage: str = "cot_filter") -> None:
        """A rejected/drops batch: rows with a ``reason`` (or ``<x>_reason``) column; null reasons
        (rows that did not fail) are not counted. A ``stage`` column (``common.REJECTED_SCHEMA``)
        names each row's stage, else ``stage`` does."""
        col = _reason_column(batch)
        if col is None:
            raise InputDataError(f"no reason column; batch has {batch.schema.names}", stage="card", field="reason")
        stages = _col(batch, "stage") or [stage] * batch.num_rows
        self.rejections.update((st or stage, r) for st, r in zip(stages, _col(batch, col)) if r is not None)

    def merge(self, other: "DataCardStats") -> "DataCardStats":
        """Add another shard's stats into this one (returns self)."""
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, Counter):
                a.update(b)
            elif isinstance(a, dict):
                for k, v in b.items():
                    a.setdefault(k, v)
            else:
                setattr(self, f.name, a + b)
        return self


# -- rendering ---------------------------------------------------------------------------------
def _pct(n: int, d: int) -> str:
    """
    >>> _pct(1, 3), _pct(0, 0)
    ('33.3 %', 'n/a')
    """
    return f"{100.0 * n / d:.1f} %" if d else "n/a"


def _median_bin(h: np.ndarray) -> str:
    """The bin of ``EDGES`` holding the median of a histogram.

    >>> _median_bin(np.array([0, 3, 1] + [0] * 17))
    '0.05-0.10'
    """
    i = int(np.searchsorted(np.cumsum(h), h.sum() / 2))
    return f"{EDGES[i]:.2f}-{EDGES[i + 1]:.2f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (``|`` in cells escaped).

    >>> print(_table(["a", "b"], [[1, "x|y"]]))
    | a | b |
    |---|---|
    | 1 | x\\|y |
    """
    esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, metadata={"Software": None})
    return buf.getvalue()


def _bar(ax, counts: Mapping[Any, int], title: str, xlabel: str = "") -> None:
    keys = list(counts)
    ax.bar([str(k) for k in keys], [counts[k] for k in keys], color="#4c72b0")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.tick_params(axis="x", labelrotation=45 if len(keys) > 4 else 0, labelsize=8)


def _hist_ax(ax, counts: np.ndarray, title: str, xlabel: str, color="#4c72b0") -> None:
    ax.bar(EDGES[:-1], counts, width=1.0 / N_BINS, align="edge", color=color, edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)


def _usage_row(role: str, m: Mapping[str, Any]) -> tuple[list[Any], dict[str, float]]:
    u = dict(m.get("usage") or {})
    pt, ct = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    cost = u.get("cost_usd")
    price = m.get("price_per_million")
    if cost is None and price:
        cost = (pt * float(price.get("prompt", 0)) + ct * float(price.get("completion", 0))) / 1e6
    row = [role, m.get("model", "?"), m.get("backend", ""), m.get("prompt_hash", ""), u.get("requests", ""), u.get("failed", ""),
           pt, ct, "" if cost is None else f"{float(cost):.4f}"]
    return row, {"prompt_tokens": pt, "completion_tokens": ct, "cost": float(cost or 0.0),
                 "requests": int(u.get("requests") or 0)}


def render_card(stats: DataCardStats, meta: Mapping[str, Any] | None = None) -> tuple[str, dict[str, bytes]]:
    """Markdown card + ``{file name: PNG bytes}``; the Markdown links ``figures/<file name>``."""
    meta = dict(meta or {})
    s = stats
    figs: dict[str, bytes] = {}
    md: list[str] = []

    def figure(name: str, fig: Figure, alt: str) -> None:
        figs[name] = _png(fig)
        md.append(f"![{alt}]({FIGURE_DIR}/{name})")

    title = meta.get("dataset", "dataset")
    md.append(f"# Data card: {title}" + (f" @ {meta['version']}" if meta.get("version") else ""))
    if meta.get("created_at"):
        md.append(f"Created: {meta['created_at']}")
    n_rej = sum(s.rejections.values()) + sum(sum(v.values()) for v in (meta.get("drops") or {}).values())
    md.append(_table(["item", "count"], [
        ["photos", sum(s.images_by_category.values())], ["entities", len(s.images_by_entity)],
        ["categories", len(s.images_by_category)], ["labeled photos with a box", s.labels_with_box],
        ["composites", sum(s.composites_by_category.values())], ["usable teacher CoTs", s.cot_ok],
        ["rejected or dropped items", n_rej],
        *[[f"{k} rows", v] for k, v in (meta.get("tables") or {}).items()],
    ]))

    # models, prompts, tokens, cost
    roles = [(r, meta[r]) for r in MODEL_ROLES if isinstance(meta.get(r), Mapping)]
    roles += list((meta.get("models") or {}).items())
    if roles or meta.get("prompt_hashes"):
        md.append("## Models, prompts, tokens and cost")
        rows, tot = [], Counter()
        for role, m in roles:
            row, t = _usage_row(role, m)
            rows.append(row)
            tot.update(t)
        if rows:
            rows.append(["total", "", "", "", tot["requests"], "", tot["prompt_tokens"], tot["completion_tokens"], f"{tot['cost']:.4f}"])
            md.append(_table(["role", "model", "backend", "prompt hash", "requests", "failed", "prompt tokens",
                              "completion tokens", "cost (USD)"], rows))
        if meta.get("prompt_hashes"):
            md.append(_table(["prompt", "hash"], sorted(meta["prompt_hashes"].items())))

    # photos
    if s.images_by_category:
        md.append("## Photos per category and entity")
        per_cat_entities = Counter(s.entity_category[e] for e in s.images_by_entity)
        md.append(_table(["category", "entities", "photos"],
                         [[c, per_cat_entities[c], n] for c, n in sorted(s.images_by_category.items())]))
        if s.images_by_split_pool:
            md.append(_table(["split", "pool", "photos"], [[a, b, n] for (a, b), n in sorted(s.images_by_split_pool.items())]))
        if s.images_by_source:
            md.append(_table(["source", "photos"], sorted(s.images_by_source.items())))
        total = sum(s.images_by_category.values())
        md.append(f"Photos with a dataset box: {s.images_with_dataset_box} of {total} ({_pct(s.images_with_dataset_box, total)}).")
        per = sorted(s.images_by_entity.values())
        md.append(f"Photos per entity: min {per[0]}, median {statistics.median(per):g}, max {per[-1]}.")
        top = sorted(s.images_by_entity.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ENTITIES]
        md.append(_table(["entity", "name", "photos", "in composites"],
                         [[e, s.entity_name.get(e, ""), n, s.entity_appearances.get(e, 0)] for e, n in top]))
        if len(s.images_by_entity) > TOP_ENTITIES:
            md.append(f"({len(s.images_by_entity) - TOP_ENTITIES} more entities not listed.)")
        fig = Figure(figsize=(8, 3))
        a1, a2 = fig.subplots(1, 2)
        _bar(a1, dict(sorted(s.images_by_category.items())), "photos per category")
        a2.hist(per, bins=min(20, max(1, len(set(per)))), color="#4c72b0")
        a2.set_title("photos per entity", fontsize=10)
        fig.tight_layout()
        figure("categories.png", fig, "photos per category and entity")

    # labels
    if s.labels_total or s.iou_n:
        md.append("## Labels")
        if s.labels_total:
            md.append(f"Labeled: {s.labels_with_box} of {s.labels_total} photos got a box ({_pct(s.labels_with_box, s.labels_total)}).")
            if s.label_failures:
                md.append(_table(["label failure", "photos"], sorted(s.label_failures.items())))
            if s.label_backends:
                md.append(_table(["label backend", "photos"], sorted(s.label_backends.items())))
            if s.box_sources:
                md.append(_table(["box source", "photos"], sorted(s.box_sources.items())))
        if s.iou_n:
            md.append(f"Labeler agreement with the dataset boxes: {s.iou_ge_05} of {s.iou_n} "
                      f"with IoU >= 0.5 ({_pct(s.iou_ge_05, s.iou_n)}).")
            fig = Figure(figsize=(5, 3))
            _hist_ax(fig.subplots(), s.iou_hist, "labeler vs dataset box", "IoU")
            fig.tight_layout()
            figure("label_agreement.png", fig, "labeler agreement IoU histogram")

    if s.photo_box_area.sum() or s.composite_box_area.sum():
        md.append("## Box sizes (box area as a share of the image)")
        md.append(_table(["boxes", "count", "median in"], [
            [k, int(h.sum()), _median_bin(h)]
            for k, h in (("photos", s.photo_box_area), ("composite entities", s.composite_box_area)) if h.sum()]))
        fig = Figure(figsize=(8, 3))
        a1, a2 = fig.subplots(1, 2)
        _hist_ax(a1, s.photo_box_area, "photo boxes", "area share")
        _hist_ax(a2, s.composite_box_area, "composite entity boxes", "area share", color="#dd8452")
        fig.tight_layout()
        figure("box_sizes.png", fig, "box size histograms")

    # composites
    if s.composites_by_category:
        n = sum(s.composites_by_category.values())
        md.append("## Composites")
        md.append(_table(["category", "composites"], sorted(s.composites_by_category.items())))
        md.append(_table(["k (entities per composite)", "composites", "share"], [[k, c, _pct(c, n)] for k, c in sorted(s.k_counts.items())]))
        md.append(_table(["layout", "composites", "share"], [[k, c, _pct(c, n)] for k, c in sorted(s.layout_counts.items())]))
        fig = Figure(figsize=(8, 3))
        a1, a2 = fig.subplots(1, 2)
        _bar(a1, dict(sorted(s.k_counts.items())), "entities per composite", "k")
        _bar(a2, dict(sorted(s.layout_counts.items())), "layouts")
        fig.tight_layout()
        figure("composites.png", fig, "k and layout distributions")

    if s.cot_total:
        md.append("## Knowledge-guided CoT")
        md.append(f"Teacher replies: {s.cot_ok} of {s.cot_total} usable ({_pct(s.cot_ok, s.cot_total)}); "
                  f"mean length {s.cot_chars / max(1, s.cot_ok):.0f} characters.")
        if s.cot_teachers:
            md.append(_table(["teacher backend", "items"], sorted(s.cot_teachers.items())))
        if s.cot_by_category:
            md.append(_table(["category", "CoT items"], sorted(s.cot_by_category.items())))
        if s.cot_failures:
            md.append(_table(["teacher failure", "items"], sorted(s.cot_failures.items())))

    drops = Counter(s.rejections)
    for stage, by_reason in (meta.get("drops") or {}).items():
        for reason, n in by_reason.items():
            drops[(stage, reason)] += int(n)
    if drops:
        md.append("## Rejected and dropped items by reason")
        md.append(_table(["stage", "reason", "items"], [[a, b, n] for (a, b), n in sorted(drops.items())]))
        fig = Figure(figsize=(6, 0.6 + 0.35 * len(drops)))
        ax = fig.subplots()
        labels = [f"{a}: {b}" for a, b in sorted(drops)]
        ax.barh(labels, [drops[k] for k in sorted(drops)], color="#c44e52")
        ax.invert_yaxis()
        ax.set_title("rejected / dropped items", fontsize=10)
        fig.tight_layout()
        figure("rejections.png", fig, "rejections by reason")

    if meta.get("contamination"):
        c = meta["contamination"]
        md.append("## Contamination check against the bench")
        md.append(f"Method: {c.get('method', '?')}.")
        checked = c.get("checked") or {}
        cont = c.get("contaminated") or {}
        md.append(_table(["training items", "checked", "near duplicates"],
                         [[k, checked.get(k, ""), cont.get(k, 0)] for k in sorted(set(checked) | set(cont))]))
        if c.get("unhashable"):
            md.append(_table(["not hashable", "items"], sorted(c["unhashable"].items())))
        if c.get("examples"):
            md.append(_table(["train item", "bench item", "distance"], [[e["train_id"], e["bench_id"], e["distance"]] for e in c["examples"]]))

    notes = meta.get("notes")
    if notes:
        md.append("## Notes")
        md.extend([notes] if isinstance(notes, str) else [f"- {n}" for n in notes])
    return "\n\n".join(md) + "\n", figs


_FIG_LINK = re.compile(r"\]\(" + re.escape(FIGURE_DIR) + r"/([^)]+\.png)\)")


def inline_figures(markdown: str, figures: Mapping[str, bytes]) -> str:
    """Replace ``](figures/x.png)`` links with base64 ``data:image/png`` URLs.

    >>> inline_figures("![a](figures/x.png)", {"x.png": b"P"})
    '![a](data:image/png;base64,UA==)'
    """
    def sub(m: re.Match) -> str:
        data = figures.get(m.group(1))
        return m.group(0) if data is None else "](data:image/png;base64," + base64.b64encode(data).decode("ascii") + ")"

    return _FIG_LINK.sub(sub, markdown)


def render_card_for_prefect(stats: DataCardStats, meta: Mapping[str, Any] | None = None) -> str:
    """The card with its figures inlined, for ``prefect.artifacts.create_markdown_artifact``."""
    markdown, figures = render_card(stats, meta)
    return inline_figures(markdown, figures)
