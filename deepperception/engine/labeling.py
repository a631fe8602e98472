"""Stage 2: a box for every single-entity image, in Qwen2-VL's 0-1000 frame.

The paper prompts Qwen2-VL-7B with ``Find and give the bounding box of {E}`` on each FGVR photo
(pseudo-labels, >95% IoU>0.5 on a manual check). Backends sit behind one ``BoxLabeler``
interface: ``OracleLabeler`` reads the synthetic renderer's true box; ``OpenAIGroundingLabeler``
asks any OpenAI-compatible VLM server and parses the reply with the official evaluator's parser.
HTTP/parse failures become rows with a null ``box`` and a ``label_error``; the caller decides
whether a failure rate is acceptable (``deepperception.engine.failures``), and a rerun passes the
partly failed table back as ``previous`` so only the failed images are asked again. Bad input (no source box for the oracle, undecodable
image) raises ``InputDataError``.
"""

from __future__ import annotations

from typing import Literal, Protocol, Sequence, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from deepperception import boxes
from deepperception.engine.common import BOX_INT, ItemFailed, decode_image, encode_png, map_bounded, require_columns
from deepperception.engine.failures import FailureBudget, good_rows
from deepperception.engine.openai_chat import OpenAIChat
from deepperception.errors import InputDataError

Box1000 = tuple[int, int, int, int]
LABEL_COLUMNS = ("box", "label_backend", "label_error")


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


class OpenAIGroundingLabeler:
    """Pseudo-labels from a grounding VLM behind an OpenAI-compatible server.

    The prompt is the paper's ``Find and give the bounding box of {E}``; the reply is parsed
    with the official evaluator's 8-regex parser. Qwen2-VL answers in 0-1000 (the default);
    set ``box_format="pixels"`` for models that answer in absolute pixels (Qwen2.5-VL).
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str = "EMPTY",
        timeout: float = 60.0,
        max_retries: int = 2,
        concurrency: int = 4,
        box_format: Literal["qwen_0_1000", "pixels"] = "qwen_0_1000",
        max_tokens: int = 128,
    ) -> None:
        self.name = f"openai:{model}"
        self.concurrency = concurrency
        self.box_format = box_format
        self.max_tokens = max_tokens
        self._chat = OpenAIChat(base_url=base_url, model=model, api_key=api_key, timeout=timeout, max_retries=max_retries)

    def label(self, image: Image.Image, entity_name: str, *, source_box_px: Sequence[float] | None = None) -> Box1000:
        from deepperception.eval.parsing import official_bbox  # lazy: owned by the eval package

        reply = self._chat.complete(encode_png(image), f"Find and give the bounding box of {entity_name}", max_tokens=self.max_tokens)
        box, pattern = official_bbox(reply)
        if pattern == 0:
            raise ItemFailed(f"no box in reply: {reply[:200]!r}")
        return clean_box(box, image.width, image.height, self.box_format)


class LabelConfig(BaseModel):
    """Stage options for ``label_images``."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int | None = Field(
        None, ge=1, description="Threads for labeling; None uses the labeler's own `concurrency`."
    )
    pools: list[Literal["train", "test"]] = Field(
        default_factory=lambda: ["train", "test"], description="Only label images from these pools (others are dropped)."
    )


def label_images(images: pa.Table, labeler: BoxLabeler, cfg: LabelConfig | None = None,
                 previous: pa.Table | None = None, max_failure_rate: float | None = None) -> pa.Table:
    """Add ``box`` (list<int32>[4], 0-1000, null on failure), ``label_backend`` and ``label_error``
    (null on success) to an images table; rows keep their order.

    ``previous`` is the output of an earlier, partly failed attempt: its images that got a box
    from the same backend keep that box and only the others are sent to the labeler again (a
    model endpoint is the expensive part, and its earlier answers stay valid). Once more than
    ``max_failure_rate`` of the images failed, the rest are not sent (their ``label_error`` says
    so): the stage fails anyway, and a dead endpoint would otherwise cost every request's retries."""
    cfg = cfg or LabelConfig()
    require_columns(images, ["image_id", "name", "image", "pool", "source_box_px"], stage="label")
    images = images.filter(pc.is_in(images.column("pool"), pa.array(cfg.pools)))
    for col in LABEL_COLUMNS:
        if col in images.column_names:
            images = images.drop_columns([col])
    ids = images.column("image_id").to_pylist()
    names = images.column("name").to_pylist()
    pngs = images.column("image").to_pylist()
    src = images.column("source_box_px").to_pylist()

    kept = good_rows(previous, "image_id", ["box", "label_backend", "label_error"],
                     lambda r: r["label_error"] is None and r["box"] is not None and r["label_backend"] == labeler.name)

    budget = FailureBudget(images.num_rows, max_failure_rate)

    def one(i: int) -> tuple[list[int] | None, str | None]:
        if ids[i] in kept:
            return list(kept[ids[i]]["box"]), None
        if budget.exhausted:
            return None, budget.skip_message()
        img = decode_image(pngs[i], stage="label", row=ids[i])
        try:
            return list(labeler.label(img, names[i], source_box_px=src[i])), None
        except ItemFailed as exc:
            budget.record_failure()
            return None, str(exc)
        except InputDataError as exc:
            raise InputDataError(exc.message, stage="label", row=ids[i], field=exc.field) from None

    results = map_bounded(one, list(range(images.num_rows)), cfg.concurrency or labeler.concurrency)
    return (
        images.append_column(pa.field("box", BOX_INT), pa.array([r[0] for r in results], type=BOX_INT))
        .append_column(pa.field("label_backend", pa.string(), nullable=False), pa.array([labeler.name] * images.num_rows, pa.string()))
        .append_column(pa.field("label_error", pa.string()), pa.array([r[1] for r in results], pa.string()))
    )
