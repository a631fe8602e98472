"""Image decoding shared by every stage: one place turns any stored image into a PIL image, or
into an error naming the stage, artifact, row and field."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from deepperception.errors import InputDataError


def decode_image(
    value: Any,
    *,
    stage: str | None = None,
    row: int | str | None = None,
    field: str = "image",
    artifact: str | None = None,
) -> Image.Image:
    """RGB PIL image from PNG/JPEG bytes, a ``{"bytes", "path"}`` struct (HF / KVG-Bench style),
    a path, or a PIL image.

    >>> decode_image(b"not a png", stage="compose", row=3)
    Traceback (most recent call last):
    ...
    deepperception.errors.InputDataError: [stage=compose row=3 field=image] image does not decode: ...
    """
    where = dict(stage=stage, artifact=artifact, row=row, field=field)
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if not value:
        raise InputDataError("image is empty or null", **where)
    if not isinstance(value, (bytes, bytearray, str)):
        raise InputDataError(f"unsupported image value of type {type(value).__name__}", **where)
    try:
        with Image.open(io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value) as im:
            im.load()
            return im.convert("RGB")
    except Exception as exc:  # PIL raises a zoo of unrelated exception types for corrupt data
        raise InputDataError(f"image does not decode: {type(exc).__name__}: {exc}", **where) from None
