"""Stage 2: a box for every single-entity image, in Qwen2-VL's 0-1000 frame.

The paper prompts Qwen2-VL-7B with ``Find and give the bounding box of {E}`` on each FGVR photo
(pseudo-labels, >95% IoU>0.5 on a manual check). Backends sit behind one ``BoxLabeler``
interface: ``OracleLabeler`` reads the synthetic renderer's true box;
``model_labeler.ModelGroundingLabeler`` asks any OpenAI-compatible VLM server and parses the reply
with the official evaluator's parser.
HTTP/parse failures become rows with a null ``box``, a ``label_error`` and a ``label_reason`` code;
the caller decides whether a failure rate is acceptable (``deepperception.engine.failures``), and
a rerun passes the partly failed table back as ``previous`` so only the failed images are asked
again. A photo that cannot be used at all (missing file, truncated JPEG, decompression bomb) is
bad *input*, not a model failure: it goes to the ``rejected`` table with its reason, and asking
again would not help. A config that cannot work (the oracle on photos without a box) raises
``InputDataError``.

Quality gate (paper: ">95 % of boxes IoU > 0.5 on a manual check of 200"): where the dataset
ships a box (FGVC-Aircraft, Stanford Cars, iNat), every model box is scored against it
(``label_iou``) and the stage reports the IoU histogram and the share >= ``agreement_iou``;
``box_source`` picks what the composites use: the ``model`` box (the paper), the ``dataset`` box,
or ``model_checked`` (the model box where it agrees with the dataset's, else, and where the
model gave no usable box, the dataset's).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from deepperception import boxes
from deepperception.engine.common import (BOX_INT, ItemFailed, map_bounded, rejected_table,
                                          require_columns)
from deepperception.engine.failures import FailureBudget, good_rows
from deepperception.errors import InputDataError
from deepperception.images import ImageProblem, open_photo, read_image_bytes, request_bytes
from deepperception.progress import progress

Box1000 = tuple[int, int, int, int]
LABEL_COLUMNS = ("box", "box_source", "label_backend", "label_error", "label_reason", "label_attempts", "label_iou")


@runtime_checkable
class BoxLabeler(Protocol):
    """Anything that grounds one named entity in one image."""

    name: str
    """Recorded in ``label_backend`` (e.g. ``oracle``, ``openai:qwen2-vl-7b``)."""
    concurrency: int
    """How many images may be labeled at once (1 = sequential)."""

    def label(self, image: Image.Image, entity_name: str, *, source_box_px: Sequence[float] | None = None) -> Box1000:
        """The entity's box in 0-1000 coordinates; raise ``ItemFailed`` for a per-item failure."""
        ...


class OracleLabeler:
    """The synthetic renderer's true box, converted to 0-1000. Exact, free, offline."""

    name = "oracle"
    concurrency = 1

    def label(self, image: Image.Image, entity_name: str, *, source_box_px: Sequence[float] | None = None) -> Box1000:
        if source_box_px is None:
            raise InputDataError(
                f"OracleLabeler needs source_box_px but it is null for {entity_name!r}; real images need a model labeler",
                stage="label", field="source_box_px",
            )
        return boxes.pixels_to_qwen(source_box_px, image.width, image.height)


def clean_box(box: Sequence[float], width: int, height: int, box_format: Literal["qwen_0_1000", "pixels"]) -> Box1000:
    """Round/clamp a parsed model box into a valid 0-1000 box or raise ``ItemFailed``.

    >>> clean_box([10.4, 20, 1003, 500], 64, 64, "qwen_0_1000")
    (10, 20, 1000, 500)
    >>> clean_box([32, 0, 64, 32], 64, 64, "pixels")
    (500, 0, 1000, 500)
    """
    if box_format == "pixels":
        q = boxes.pixels_to_qwen(box, width, height)
    else:
        q = tuple(int(min(1000, max(0, round(v)))) for v in box)
    x1, y1, x2, y2 = q
    if not (x1 < x2 and y1 < y2):
        raise ItemFailed(f"degenerate box {list(box)} (after clamping to 0..1000: {list(q)})")
    return (x1, y1, x2, y2)


class LabelConfig(BaseModel):
    """Stage options for ``label_images``."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int | None = Field(
        None, ge=1, description="Threads for single-item labelers; None uses the labeler's own `concurrency`."
    )
    pools: list[Literal["train", "test"]] = Field(
        default_factory=lambda: ["train", "test"], description="Only label images from these pools (others are dropped)."
    )
    box_source: Literal["model", "dataset", "model_checked"] = Field(
        "model", description="Which box the composites use: the labeler's (the paper), the dataset's where it ships "
        "one (no model call for those photos), or the labeler's only where it agrees with the dataset's "
        "(IoU >= agreement_iou), else (disagreement, or no usable model box) the dataset's.")
    agreement_iou: float = Field(
        0.5, ge=0.0, le=1.0, description="IoU with the dataset box at which a model box counts as agreeing.")


LABELED_EXTRA = pa.schema([
    pa.field("box", BOX_INT),
    pa.field("box_source", pa.string()),
    pa.field("label_backend", pa.string(), nullable=False),
    pa.field("label_error", pa.string()),
    pa.field("label_reason", pa.string()),
    pa.field("label_attempts", pa.int32()),
    pa.field("label_iou", pa.float32()),
])

IOU_BINS = 10


@dataclass
class LabelResult:
    """One labeling pass: the labeled rows, the photos that could not be used, and statistics
    (``agreement``: IoU histogram against dataset boxes; ``usage``: the labeler's requests/tokens)."""

    data: pa.Table
    rejected: pa.Table
    stats: dict[str, Any]


def agreement_stats(ious: Sequence[float], threshold: float) -> dict[str, Any]:
    """Histogram (10 bins over 0..1) and share of IoUs >= ``threshold``; sums across shards
    with :func:`deepperception.engine.common.merge_counts` (``compared``/``agreeing``/``histogram``).

    >>> agreement_stats([0.05, 0.55, 0.95, 1.0], 0.5)
    {'compared': 4, 'agreeing': 3, 'histogram': [1, 0, 0, 0, 0, 1, 0, 0, 0, 2], 'threshold': 0.5}
    """
    hist = [0] * IOU_BINS
    for v in ious:
        hist[min(IOU_BINS - 1, max(0, int(v * IOU_BINS)))] += 1
    return {"compared": len(ious), "agreeing": sum(1 for v in ious if v >= threshold), "histogram": hist,
            "threshold": threshold}


def label_images(images: pa.Table, labeler: BoxLabeler, cfg: LabelConfig | None = None,
                 previous: pa.Table | None = None, max_failure_rate: float | None = None) -> pa.Table:
    """The labeled rows of :func:`label_table` (photos that could not be used are left out)."""
    return label_table(images, labeler, cfg, previous, max_failure_rate).data


def label_table(images: pa.Table, labeler: BoxLabeler, cfg: LabelConfig | None = None,
                previous: pa.Table | None = None, max_failure_rate: float | None = None) -> LabelResult:
    """Add ``box`` (list<int32>[4], 0-1000, null on failure), ``box_source``, ``label_backend``,
    ``label_error``/``label_reason``/``label_attempts`` (null error on success) and ``label_iou``
    (agreement with the dataset box, where there is one) to an images table; rows keep their order.

    ``previous`` is the output of an earlier, partly failed attempt: its images that got a box
    from the same backend keep that box and only the others are sent to the labeler again (a
    model endpoint is the expensive part, and its earlier answers stay valid). Once more than
    ``max_failure_rate`` of the images failed, the rest are not sent (their ``label_error`` says
    so): the stage fails anyway, and a dead endpoint would otherwise cost every request's retries.
    Photos are loaded one at a time as the labeler asks for them (at most ``concurrency`` in memory)."""
    cfg = cfg or LabelConfig()
    require_columns(images, ["image_id", "name", "pool", "source_box_px"], stage="label")
    if "image" not in images.column_names and "image_uri" not in images.column_names:
        raise InputDataError("missing column(s) ['image', 'image_uri']: need the photo bytes or its URI",
                             stage="label", field="image")
    images = images.filter(pc.is_in(images.column("pool"), pa.array(cfg.pools)))
    for col in LABEL_COLUMNS:
        if col in images.column_names:
            images = images.drop_columns([col])
    n = images.num_rows
    col = lambda c, default=None: images.column(c).to_pylist() if c in images.column_names else [default] * n  # noqa: E731
    ids, names, src = col("image_id"), col("name"), col("source_box_px")
    inline, uris, crops = col("image"), col("image_uri"), col("crop_bottom", 0)
    kept = good_rows(previous, "image_id", ["box", "box_source", "label_backend", "label_error", "label_iou",
                                            "label_attempts"] if previous is not None and "box_source" in
                     previous.column_names else ["box", "label_backend", "label_error"],
                     lambda r: r["label_error"] is None and r["box"] is not None and r["label_backend"] == labeler.name)

    budget = FailureBudget(n, max_failure_rate)
    out: list[dict | None] = [None] * n
    sizes: list[tuple[int | None, int | None]] = [(None, None)] * n
    rejected: list[tuple[int, dict]] = []  # (row, record): sorted at the end, threads finish in any order

    def load(i: int) -> tuple[bytes, Image.Image] | None:
        """(bytes to send a model, decoded photo), or None with the photo recorded as rejected."""
        try:
            data = read_image_bytes(inline[i], uris[i])
            photo = open_photo(data, crop_bottom=crops[i] or 0, name=uris[i] or ids[i])
        except ImageProblem as exc:
            rejected.append((i, {"item_id": ids[i], "stage": "label", "reason": exc.reason,
                                 "detail": f"{uris[i] or 'inline image'}: {exc.detail}"}))
            return None
        sizes[i] = (photo.width, photo.height)
        return request_bytes(data, photo, crop_bottom=crops[i] or 0), photo

    def dataset_box(i: int, w: int, h: int) -> Box1000 | None:
        if src[i] is None:
            return None
        return boxes.pixels_to_qwen(src[i], w, h)

    def finish(i: int, box, error, reason, attempts, source) -> None:
        out[i] = {"box": list(box) if box is not None else None, "box_source": source if box is not None else None,
                  "label_error": error, "label_reason": reason, "label_attempts": attempts}

    # Rows answered without a model call: kept from the previous attempt, or the dataset's box.
    pending: list[int] = []
    for i in range(n):
        old = kept.get(ids[i])
        if old is not None:
            finish(i, old["box"], None, None, old.get("label_attempts") or 0, old.get("box_source") or "model")
            out[i]["label_iou"] = old.get("label_iou")
            sizes[i] = (None, None)
            continue
        if labeler.name != "oracle" and cfg.box_source == "dataset" and src[i] is not None:
            loaded = load(i)
            if loaded is not None:
                finish(i, dataset_box(i, *loaded[1].size), None, None, 0, "dataset")
            continue
        pending.append(i)

    # model_checked: a photo with a dataset box still gets a box when the model fails on it, so its
    # failure does not count against the stage's failure budget.
    rescuable = {i for i in pending if cfg.box_source == "model_checked" and src[i] is not None}
    # The model calls are the long part: a progress bar over them (Prefect's, when tasks/ listens).
    tracker = progress("label-boxes", total=n, done=n - len(pending), unit="images")
    if hasattr(labeler, "label_many"):
        with tracker:
            _label_streaming(labeler, pending, load, names, budget, finish, rescuable, tracker.advance)
    else:
        def one(i: int) -> None:
            try:
                label_one(i)
            finally:
                tracker.advance()

        def label_one(i: int) -> None:
            if budget.exhausted:
                return finish(i, None, budget.skip_message(), "not_attempted", 0, None)
            loaded = load(i)
            if loaded is None:
                return None
            try:
                box = labeler.label(loaded[1], names[i], source_box_px=src[i])
            except ItemFailed as exc:
                if i not in rescuable:
                    budget.record_failure()
                return finish(i, None, str(exc), getattr(exc, "reason", None) or "item_failed", 1, None)
            except InputDataError as exc:
                raise InputDataError(exc.message, stage="label", row=ids[i], field=exc.field) from None
            finish(i, box, None, None, 1, "model" if labeler.name != "oracle" else "oracle")

        with tracker:
            map_bounded(one, pending, cfg.concurrency or labeler.concurrency)

    # Agreement with the dataset's boxes, and the model_checked fallback.
    ious: list[float] = []
    fallbacks = 0
    for i in range(n):
        r = out[i]
        if r is None or "label_iou" in r:
            continue
        r["label_iou"] = None
        w, h = sizes[i]
        if r["box"] is None and i in rescuable and w is not None:
            # The model gave no usable box: the dataset's box stands in; why is kept in label_reason.
            r.update(box=list(dataset_box(i, w, h)), box_source="dataset", label_error=None,
                     label_reason=f"fallback:{r['label_reason']}")
            fallbacks += 1
            continue
        if r["box"] is None or src[i] is None or w is None or r["box_source"] == "dataset":
            continue
        ref = dataset_box(i, w, h)
        iou = boxes.box_iou(r["box"], ref)
        iou = 0.0 if iou != iou else iou  # NaN (degenerate union) counts as no agreement
        r["label_iou"] = iou
        ious.append(iou)
        if cfg.box_source == "model_checked" and iou < cfg.agreement_iou:
            r["box"], r["box_source"] = list(ref), "dataset"
            fallbacks += 1

    keep = [i for i in range(n) if out[i] is not None]
    data = images.take(pa.array(keep, pa.int64())) if len(keep) != n else images
    if "width" in data.column_names:  # sizes of photos decoded here (after any banner crop)
        for c, k in (("width", 0), ("height", 1)):
            vals = [sizes[i][k] if sizes[i][k] is not None else old for i, old in
                    zip(keep, data.column(c).to_pylist())]
            data = data.set_column(data.column_names.index(c), data.schema.field(c), pa.array(vals, pa.int32()))
    for f in LABELED_EXTRA:
        if f.name == "label_backend":
            arr = pa.array([labeler.name] * len(keep), pa.string())
        else:
            arr = pa.array([out[i].get(f.name) for i in keep], f.type)
        data = data.append_column(f, arr)
    stats = {"agreement": agreement_stats(ious, cfg.agreement_iou), "fallback_to_dataset_box": fallbacks,
             "box_source": dict(Counter(out[i]["box_source"] for i in keep if out[i]["box"] is not None)),
             "rejected": dict(Counter(r["reason"] for _, r in rejected))}
    usage = getattr(labeler, "usage", None)
    if usage is not None and hasattr(usage, "to_metadata"):
        stats["usage"] = usage.to_metadata()
    return LabelResult(data, rejected_table([r for _, r in sorted(rejected, key=lambda t: t[0])]), stats)


def _label_streaming(labeler, pending: list[int], load, names, budget: FailureBudget, finish,
                     rescuable: set[int], advance=lambda n=1: None) -> None:
    """Feed a batch labeler (``label_many``: an OpenAI-compatible endpoint with its own bounded
    concurrency) a lazy stream of photos, so at most its in-flight requests are in memory.
    ``advance()`` is called once per photo done (answered, skipped or unreadable)."""
    from deepperception.engine.model_labeler import LabelItem

    def items():
        for i in pending:
            if budget.exhausted:
                finish(i, None, budget.skip_message(), "not_attempted", 0, None)
                advance()
                continue
            loaded = load(i)
            if loaded is None:
                advance()
                continue
            data, photo = loaded
            yield LabelItem(key=str(i), image=data, width=photo.width, height=photo.height, entity_name=names[i])

    for outcome in labeler.label_many(items()):
        i = int(outcome.key)
        if outcome.box is None:
            if i not in rescuable:
                budget.record_failure()
            finish(i, None, outcome.error or "no box", outcome.reason or "item_failed", outcome.attempts, None)
        else:
            finish(i, outcome.box, None, None, outcome.attempts, "model")
        advance()
