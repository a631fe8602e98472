"""Stage 6: the engine's outputs in the OFFICIAL formats.

- SFT rows: TRL conversational messages (one image placeholder, the official R1 user prompt,
  the ``<think>..</think><answer>..</answer>`` assistant text) plus the PNG bytes.
- GRPO rows: ``grpo-{category}.parquet`` columns (``image``, ``problem``, ``solution``) as the
  authors' ``grpo.py`` reads them; ``solution`` keeps the official spaces inside ``<answer>``.
- KVG-Bench: ``question_id``, ``question``, ``image`` as a plain ``struct<bytes, path>`` (the
  official evaluator indexes ``['bytes']``, so NOT an HF Image feature), ``answer``, ``category``;
  one ground-truth box per question, images reused across questions.
- FGVR bench (:func:`build_fgvr_bench`): multiple choice over single-entity images, the format
  documented in :mod:`deepperception.eval.fgvr` (no official data survives).
"""

from __future__ import annotations

import json

import pyarrow as pa

from deepperception import boxes, prompts
from deepperception.engine.common import IMAGE_STRUCT, choose_targets, composite_entities, require_columns
from deepperception.errors import InputDataError

SFT_SCHEMA = pa.schema(
    [
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("messages", pa.string(), nullable=False),
        pa.field("images", pa.list_(pa.binary()), nullable=False),
    ]
)
GRPO_SCHEMA = pa.schema(
    [
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("image", IMAGE_STRUCT, nullable=False),
        pa.field("problem", pa.string(), nullable=False),
        pa.field("solution", pa.string(), nullable=False),
    ]
)
from deepperception.tables import BENCH_SCHEMA  # noqa: E402  (the official KVG-Bench schema)


def grpo_solution(entity: str, box: tuple[int, int, int, int] | list[int]) -> str:
    """The GRPO ``solution`` string exactly as in the released data (spaces inside ``<answer>``).

    >>> grpo_solution("Douglas DC-6", [519, 608, 986, 768])
    '<answer> <|object_ref_start|>Douglas DC-6<|object_ref_end|><|box_start|>(519,608),(986,768)<|box_end|> </answer>'
    """
    return f"<answer> {boxes.grounding_answer(entity, box)} </answer>"


def sft_messages(question: str, response: str) -> list[dict]:
    """TRL conversational messages for one SFT item (image placeholder first, as the official
    inference prompt puts the image before the text).

    >>> sft_messages("Q", "R")[1]
    {'role': 'assistant', 'content': [{'type': 'text', 'text': 'R'}]}
    """
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompts.user_text(question, "r1")}]},
        {"role": "assistant", "content": [{"type": "text", "text": response}]},
    ]


def build_sft_rows(kept_cot: pa.Table, composites: pa.Table | dict[str, bytes]) -> pa.Table:
    """One SFT row per kept CoT, joined to its composite image by ``composite_id`` (``composites``:
    a table, or just the ``composite_id -> image`` bytes this batch of CoTs needs)."""
    stage = "build_sft"
    require_columns(kept_cot, ["question_id", "composite_id", "target_entity", "response"], stage=stage)
    if isinstance(composites, dict):
        image_of = composites
    else:
        require_columns(composites, ["composite_id", "image"], stage=stage)
        image_of = dict(zip(composites.column("composite_id").to_pylist(), composites.column("image").to_pylist()))
    rows: dict[str, list] = {n: [] for n in SFT_SCHEMA.names}
    for qid, cid, target, response in zip(*(kept_cot.column(c).to_pylist() for c in ["question_id", "composite_id", "target_entity", "response"])):
        if not response:
            raise InputDataError("response is null or empty (was this CoT filtered?)", stage=stage, row=qid, field="response")
        if cid not in image_of:
            raise InputDataError(f"composite {cid!r} is not in the composites table", stage=stage, row=qid, field="composite_id")
        rows["question_id"].append(qid)
        rows["messages"].append(json.dumps(sft_messages(prompts.grounding_question(target), response), ensure_ascii=False))
        rows["images"].append([image_of[cid]])
    return pa.Table.from_pydict(rows, schema=SFT_SCHEMA)


def _questions(composites: pa.Table, per_composite: int, seed: int, purpose: str, stage: str):
    require_columns(composites, ["composite_id", "category", "image", "entities"], stage=stage)
    for cid, cat, image, ents in zip(*(composites.column(c).to_pylist() for c in ["composite_id", "category", "image", "entities"])):
        items = composite_entities(ents, stage=stage, row=cid)
        for t in choose_targets(cid, len(items), per_composite, seed, purpose):
            yield cid, cat, image, t, items[t]


def build_grpo_rows(composites: pa.Table, targets_per_composite: int = 1, seed: int = 0) -> pa.Table:
    """GRPO prompts in the authors' ``grpo-{category}.parquet`` layout (plus ids for lineage)."""
    rows: dict[str, list] = {n: [] for n in GRPO_SCHEMA.names}
    for cid, cat, image, t, item in _questions(composites, targets_per_composite, seed, "grpo", "build_grpo"):
        rows["question_id"].append(f"{cat}/{cid}-{t}")
        rows["category"].append(cat)
        rows["image"].append({"bytes": image, "path": f"{cid}.png"})
        rows["problem"].append(prompts.grounding_question(item["name"]))
        rows["solution"].append(grpo_solution(item["name"], item["box"]))
    return pa.Table.from_pydict(rows, schema=GRPO_SCHEMA)


def build_bench(composites: pa.Table, questions_per_composite: int = 2, seed: int = 0, *, allow_train_pool: bool = False,
                counters: dict[str, int] | None = None) -> pa.Table:
    """KVG-Bench rows in the official parquet schema; ``question_id`` is ``{category}/{n}``
    numbered per category. Refuses "train"-pool composites (a leak) unless told otherwise.
    ``counters`` carries the per-category numbering from one batch of a streamed table to the next."""
    stage = "build_bench"
    if "pool" in composites.column_names and not allow_train_pool:
        pools = set(composites.column("pool").to_pylist())
        if pools - {"test"}:
            raise InputDataError(f"bench composites must come from the 'test' pool, found {sorted(pools)}", stage=stage, field="pool")
    counters = {} if counters is None else counters
    rows: dict[str, list] = {n: [] for n in BENCH_SCHEMA.names}
    for cid, cat, image, _, item in _questions(composites, questions_per_composite, seed, "bench", stage):
        n = counters.get(cat, 0)
        counters[cat] = n + 1
        rows["question_id"].append(f"{cat}/{n}")
        rows["question"].append(prompts.grounding_question(item["name"]))
        rows["image"].append({"bytes": image, "path": f"{cid}.png"})
        rows["answer"].append(boxes.grounding_answer(item["name"], item["box"]))
        rows["category"].append(cat)
    return pa.Table.from_pydict(rows, schema=BENCH_SCHEMA)


def build_fgvr_bench(images: pa.Table, n_options: int = 4, pool: str = "test", seed: int = 0) -> pa.Table:
    """An FGVR multiple-choice bench (format: :mod:`deepperception.eval.fgvr`) from single-entity images.

    One question per image of ``pool`` (table order): the stem ``prompts.fgvr_question(category)``
    ("What is the name of the {category} in this image?") followed by ``n_options`` lettered
    options, namely the image's entity name and ``n_options - 1`` distinct distractor names of the
    SAME category (thunlp/KARL #1: 3 same-category distractors), drawn from every name of that
    category in ``images`` (all pools: names are the label set, not test data), then shuffled.
    Both draws are fixed by ``(seed, image_id)`` only, so a question does not change when other
    rows are added or removed. ``question_id`` is the ``image_id`` (``<category>/<nn>/<nnn>``
    for synthetic images), ``answer`` the letter of the entity's name, ``image`` a plain
    ``struct<bytes, path>`` as in KVG-Bench.

    Raises :class:`InputDataError` naming the row (``image_id``) for an empty name/category, a
    null image, a repeated ``image_id``, or a category with fewer than ``n_options`` distinct names;
    and naming the field when a column is missing or no image is in ``pool``.
    """
    from deepperception.domain.seeding import rng_for
    from deepperception.eval.fgvr import FGVR_BENCH_SCHEMA, LETTERS, build_question

    stage = "build_fgvr_bench"
    if not 2 <= n_options <= len(LETTERS):
        raise InputDataError(f"n_options must be in 2..{len(LETTERS)}, got {n_options}", stage=stage, field="n_options")
    cols = ["image_id", "category", "name", "pool", "image"]
    require_columns(images, cols, stage=stage)
    data = {c: images.column(c).to_pylist() for c in cols}
    names_of: dict[str, set[str]] = {}
    seen: set[str] = set()
    for i, (iid, cat, name) in enumerate(zip(data["image_id"], data["category"], data["name"])):
        row = iid if isinstance(iid, str) and iid else i
        if not isinstance(iid, str) or not iid:
            raise InputDataError(f"image_id must be a non-empty string, got {iid!r}", stage=stage, row=row, field="image_id")
        if iid in seen:
            raise InputDataError("duplicate image_id", stage=stage, row=row, field="image_id")
        seen.add(iid)
        for field, v in (("category", cat), ("name", name)):
            if not isinstance(v, str) or not v.strip():
                raise InputDataError(f"{field} must be a non-empty string, got {v!r}", stage=stage, row=row, field=field)
        names_of.setdefault(cat, set()).add(name)
    selected = [i for i, p in enumerate(data["pool"]) if p == pool]
    if not selected:
        raise InputDataError(f"no image in pool {pool!r}; pools present: {sorted(set(map(str, data['pool'])))}",
                             stage=stage, field="pool")

    rows: dict[str, list] = {n: [] for n in FGVR_BENCH_SCHEMA.names}
    for i in selected:
        iid, cat, name, image = (data[c][i] for c in ("image_id", "category", "name", "image"))
        if not image:
            raise InputDataError("image bytes are null or empty", stage=stage, row=iid, field="image")
        others = sorted(names_of[cat] - {name})
        if len(others) < n_options - 1:
            raise InputDataError(f"category {cat!r} has {len(others) + 1} distinct name(s); {n_options} options "
                                 "need that many", stage=stage, row=iid, field="name")
        rng = rng_for("fgvr", seed, iid)
        options = [name, *rng.sample(others, n_options - 1)]
        rng.shuffle(options)
        rows["question_id"].append(iid)
        rows["question"].append(build_question(prompts.fgvr_question(cat), options))
        rows["options"].append(options)
        rows["image"].append({"bytes": image, "path": f"{iid}.png"})
        rows["answer"].append(LETTERS[options.index(name)])
        rows["category"].append(cat)
    return pa.Table.from_pydict(rows, schema=FGVR_BENCH_SCHEMA)
