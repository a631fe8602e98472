"""Exports in the formats the official training code reads (official-code.md §4.2, §4.3).

* Stage 1 (CoT-SFT) was trained with LLaMA-Factory: a sharegpt JSON file, ``{"messages":
  [{"role", "content"}...], "images": [path...]}`` per item, registered in ``dataset_info.json``
  with ``formatting: sharegpt`` and the ``role``/``content``/``user``/``assistant`` tags.
  :func:`export_sharegpt` writes ``<out>/<name>.json``, the images under ``<out>/images/`` (the
  stored bytes as they are, extension from their magic bytes) and merges the entry into
  ``<out>/dataset_info.json``; train with ``dataset_dir: <out>`` (image paths are relative to
  LLaMA-Factory's ``media_dir``, which defaults to ``dataset_dir``).
* Stage 2 (GRPO) reads ``grpo-{category}.parquet`` with columns ``image, problem, solution``;
  :func:`export_grpo` writes exactly those, one file per category, batch by batch with
  ``pyarrow.parquet.ParquetWriter``. ``image`` is the ``struct<bytes, path>`` of an HF
  ``datasets.Image`` feature, and the files carry the ``huggingface`` schema metadata declaring
  it, so ``datasets.load_dataset("parquet", ...)`` decodes it with or without the official
  ``cast_column("image", Image())``.

Placeholders. ``datasets.build_sft_rows`` writes TRL conversational messages (content = list of
``{"type": "image"}`` / ``{"type": "text"}`` parts). LLaMA-Factory wants a content *string* in
which every image is a literal ``<image>`` (its ``mm_plugin`` refuses an example whose
placeholder count differs from its number of images, and the Qwen2-VL template expands each one
to the image's vision tokens). So each image part becomes ``<image>`` at its position (the
official prompt puts the image first: ``<image>Find and give ...``), the text parts are joined
as they are, and a text that already contains ``<image>``/``<video>``/``<audio>`` (it would be
read as a placeholder) or a placeholder count different from the row's images is an
``InputDataError`` naming the row. Messages must alternate user/assistant starting with the user
(LLaMA-Factory drops other examples as "broken data").

Both writers stream: one batch in memory, outputs written to ``*.tmp`` and renamed on success.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deepperception.errors import InputDataError
from deepperception.tables import IMAGE_STRUCT

IMAGE_PLACEHOLDER = "<image>"
_RESERVED = ("<image>", "<video>", "<audio>")
SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
GRPO_COLUMNS = ("image", "problem", "solution")
GRPO_EXPORT_SCHEMA = pa.schema(
    [pa.field("image", IMAGE_STRUCT), pa.field("problem", pa.string()), pa.field("solution", pa.string())],
    metadata={"huggingface": json.dumps({"info": {"features": {
        "image": {"_type": "Image"},
        "problem": {"dtype": "string", "_type": "Value"},
        "solution": {"dtype": "string", "_type": "Value"},
    }}})},
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def image_extension(data: bytes) -> str:
    """File extension from an encoded image's magic bytes (``png``, ``jpg``, ``webp``, ``gif``,
    ``bmp``), or ``ValueError``.

    >>> image_extension(b"\\x89PNG\\r\\n\\x1a\\n..."), image_extension(b"\\xff\\xd8\\xff\\xe0...")
    ('png', 'jpg')
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    raise ValueError(f"not a PNG/JPEG/WebP/GIF/BMP file (starts with {data[:8]!r})")


def safe_name(item_id: str) -> str:
    """A file name for an item id: unchanged when it only has ``[A-Za-z0-9_.-]``, else the
    other characters become ``_`` and 8 hex digits of its SHA-1 keep distinct ids distinct.

    >>> safe_name("fish-train-0001-2")
    'fish-train-0001-2'
    >>> safe_name("fish/fish-train-0001-2")
    'fish_fish-train-0001-2-bde1116d'
    """
    if _NAME_RE.match(item_id) and ".." not in item_id:
        return item_id
    return re.sub(r"[^A-Za-z0-9_.-]", "_", item_id).replace("..", "_") + "-" + hashlib.sha1(item_id.encode()).hexdigest()[:8]


def sharegpt_messages(messages: list[dict], n_images: int, *, row: str | int | None = None) -> list[dict]:
    """TRL conversational messages -> LLaMA-Factory sharegpt messages (content strings with one
    ``<image>`` per image part; string contents are kept and checked the same way).

    >>> sharegpt_messages([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
    ...                    {"role": "assistant", "content": [{"type": "text", "text": "A"}]}], 1)
    [{'role': 'user', 'content': '<image>Q'}, {'role': 'assistant', 'content': 'A'}]
    """
    stage = "export_sharegpt"
    if not isinstance(messages, list) or not messages or len(messages) % 2:
        raise InputDataError("messages must be a non-empty list of user/assistant pairs", stage=stage, row=row, field="messages")
    out, placeholders = [], 0
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise InputDataError(f"messages[{i}] has role {role!r}, expected {want!r} (user/assistant turns alternate)",
                                 stage=stage, row=row, field="messages")
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise InputDataError(f"messages[{i}].content must be a string or a list of parts", stage=stage, row=row, field="messages")
        text = []
        for p in parts:
            kind = p.get("type") if isinstance(p, dict) else None
            if kind == "image":
                if role != "user":
                    raise InputDataError(f"messages[{i}] is an {role} turn with an image", stage=stage, row=row, field="messages")
                text.append(IMAGE_PLACEHOLDER)
                placeholders += 1
            elif kind == "text" and isinstance(p.get("text"), str):
                if isinstance(content, str):  # already a LLaMA-Factory string: its placeholders count
                    n = content.count(IMAGE_PLACEHOLDER)
                    placeholders += n
                    bad = [t for t in _RESERVED[1:] if t in content]
                else:
                    n, bad = 0, [t for t in _RESERVED if t in p["text"]]
                if bad:
                    raise InputDataError(f"messages[{i}] text contains {bad[0]!r}, which LLaMA-Factory reads as a placeholder",
                                         stage=stage, row=row, field="messages")
                text.append(p["text"])
            else:
                raise InputDataError(f"messages[{i}] has an unsupported part {p!r}", stage=stage, row=row, field="messages")
        out.append({"role": role, "content": "".join(text)})
    if placeholders != n_images:
        raise InputDataError(f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for {n_images} image(s)",
                             stage=stage, row=row, field="messages")
    return out


def sharegpt_dataset_info(file_name: str) -> dict[str, Any]:
    """The ``dataset_info.json`` entry of a sharegpt file with images.

    >>> sharegpt_dataset_info("kvg.json")["formatting"]
    'sharegpt'
    """
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"}, "tags": dict(SHAREGPT_TAGS)}


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def merge_dataset_info(out_dir: str | Path, name: str, entry: dict[str, Any]) -> Path:
    """Set ``name`` in ``<out_dir>/dataset_info.json``, keeping every other entry."""
    path = Path(out_dir) / "dataset_info.json"
    info: dict[str, Any] = {}
    if path.exists():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputDataError(f"{path.name} is not JSON ({exc})", stage="export_sharegpt", artifact=path.name) from None
        if not isinstance(info, dict):
            raise InputDataError(f"{path.name} must hold a JSON object, not {type(info).__name__}", stage="export_sharegpt",
                                 artifact=path.name)
    info[name] = entry
    _write_json_atomic(path, info)
    return path


def _check_name(name: str, what: str, stage: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise InputDataError(f"{what} {name!r} must match [A-Za-z0-9][A-Za-z0-9_.-]*", stage=stage, field=what)


def export_sharegpt(sft_batches: Iterable[pa.RecordBatch | pa.Table], out_dir: str | Path, dataset_name: str, *,
                    images_dir: str = "images", update_dataset_info: bool = True) -> dict[str, Any]:
    """Write SFT rows (``datasets.SFT_SCHEMA``) as a LLaMA-Factory sharegpt dataset; returns
    ``{"dataset_name", "file_name", "rows", "images", "dataset_info"}`` (the entry written)."""
    stage = "export_sharegpt"
    _check_name(dataset_name, "dataset_name", stage)
    _check_name(images_dir, "images_dir", stage)
    out = Path(out_dir)
    (out / images_dir).mkdir(parents=True, exist_ok=True)
    file_name = f"{dataset_name}.json"
    tmp = out / (file_name + ".tmp")
    rows = n_images = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("[")
            for batch in sft_batches:
                missing = [c for c in ("question_id", "messages", "images") if c not in batch.schema.names]
                if missing:
                    raise InputDataError(f"missing column(s) {missing}; batch has {batch.schema.names}", stage=stage, field=missing[0])
                for qid, msgs, imgs in zip(*(batch.column(c).to_pylist() for c in ("question_id", "messages", "images"))):
                    imgs = imgs or []
                    try:
                        parsed = json.loads(msgs) if isinstance(msgs, str) else msgs
                    except json.JSONDecodeError as exc:
                        raise InputDataError(f"messages is not JSON ({exc})", stage=stage, row=qid, field="messages") from None
                    messages = sharegpt_messages(parsed, len(imgs), row=qid)
                    paths = []
                    for j, data in enumerate(imgs):
                        if not data:
                            raise InputDataError(f"images[{j}] is empty", stage=stage, row=qid, field="images")
                        try:
                            ext = image_extension(data)
                        except ValueError as exc:
                            raise InputDataError(f"images[{j}]: {exc}", stage=stage, row=qid, field="images") from None
                        rel = f"{images_dir}/{safe_name(qid)}{'' if len(imgs) == 1 else f'-{j}'}.{ext}"
                        (out / rel).write_bytes(data)
                        paths.append(rel)
                    fh.write(("\n" if rows == 0 else ",\n") + json.dumps({"messages": messages, "images": paths}, ensure_ascii=False))
                    rows += 1
                    n_images += len(paths)
            fh.write("\n]\n")
        if rows == 0:
            raise InputDataError("no SFT rows to export", stage=stage, field="messages")
        os.replace(tmp, out / file_name)
    finally:
        tmp.unlink(missing_ok=True)
    entry = sharegpt_dataset_info(file_name)
    if update_dataset_info:
        merge_dataset_info(out, dataset_name, entry)
    return {"dataset_name": dataset_name, "file_name": file_name, "rows": rows, "images": n_images, "dataset_info": entry}


def export_grpo(grpo_batches: Iterable[pa.RecordBatch | pa.Table], out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Write GRPO rows (``datasets.GRPO_SCHEMA``: ``category``, ``image``, ``problem``,
    ``solution``) as ``<out_dir>/grpo-{category}.parquet`` with exactly the columns ``image,
    problem, solution``; returns ``{category: {"file": name, "rows": n}}``."""
    stage = "export_grpo"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers: dict[str, pq.ParquetWriter] = {}
    counts: dict[str, int] = {}
    ok = False
    try:
        for batch in grpo_batches:
            need = ["category", *GRPO_COLUMNS]
            missing = [c for c in need if c not in batch.schema.names]
            if missing:
                raise InputDataError(f"missing column(s) {missing}; batch has {batch.schema.names}", stage=stage, field=missing[0])
            if not batch.schema.field("image").type.equals(IMAGE_STRUCT):
                raise InputDataError(f"image must be {IMAGE_STRUCT}, got {batch.schema.field('image').type}", stage=stage, field="image")
            cats = batch.column("category")
            ids = batch.column("question_id").to_pylist() if "question_id" in batch.schema.names else None
            for col in GRPO_COLUMNS:
                nulls = pc.is_null(batch.column(col))
                if pc.any(nulls).as_py():
                    i = pc.index(nulls, True).as_py()
                    raise InputDataError(f"{col} is null", stage=stage, row=ids[i] if ids else i, field=col)
            for cat in pc.unique(cats).to_pylist():
                if not isinstance(cat, str) or not _NAME_RE.match(cat) or ".." in cat:
                    i = cats.to_pylist().index(cat)
                    raise InputDataError(f"category {cat!r} cannot name a file", stage=stage, row=ids[i] if ids else i, field="category")
                part = batch.filter(pc.equal(cats, cat)).select(list(GRPO_COLUMNS))
                table = pa.Table.from_batches([part]) if isinstance(part, pa.RecordBatch) else part
                table = table.cast(GRPO_EXPORT_SCHEMA)
                if cat not in writers:
                    writers[cat] = pq.ParquetWriter(out / f"grpo-{cat}.parquet.tmp", GRPO_EXPORT_SCHEMA)
                    counts[cat] = 0
                writers[cat].write_table(table)
                counts[cat] += table.num_rows
        if not counts:
            raise InputDataError("no GRPO rows to export", stage=stage, field="category")
        ok = True
    finally:
        for w in writers.values():
            w.close()
        for cat in writers:
            tmp = out / f"grpo-{cat}.parquet.tmp"
            if ok:
                os.replace(tmp, out / f"grpo-{cat}.parquet")
            else:
                tmp.unlink(missing_ok=True)
    return {cat: {"file": f"grpo-{cat}.parquet", "rows": n} for cat, n in sorted(counts.items())}
