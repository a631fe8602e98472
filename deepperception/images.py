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
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and im.width * im.height > limit:
                # PIL only warns between 1x and 2x its limit and would decode it all (a 10000x10000
                # PNG of a few KB is 300 MB of RGB): refuse it by its header, like open_photo.
                raise InputDataError(f"image refused as a decompression bomb: {im.width}x{im.height} pixels "
                                     f"is more than PIL's limit of {limit}", **where)
            im.load()
            return im.convert("RGB")
    except InputDataError:
        raise
    except Exception as exc:  # PIL raises a zoo of unrelated exception types for corrupt data
        raise InputDataError(f"image does not decode: {type(exc).__name__}: {exc}", **where) from None


# ---- source photos referenced by URI ------------------------------------------------------------
# Real datasets are referenced, not copied: a table row carries the original file's URI (or, for
# rendered images, the original bytes) and a stage loads one photo at a time when it needs it.
# A photo that cannot be used is an *item* problem (recorded with a reason code, the stage goes
# on with the rest), not a crash: one truncated JPEG among 400K must not stop a labeling run.

class ImageProblem(Exception):
    """One photo cannot be used; ``reason`` is a short code recorded on its row
    (``missing_file``, ``corrupt_image``, ``decompression_bomb``, ``empty_image``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_image_bytes(image: bytes | None, uri: str | None) -> bytes:
    """The encoded bytes of a row's photo: its inline ``image`` bytes or the file at ``image_uri``
    (a local path or ``s3://bucket/key``, read with the store's S3 settings)."""
    if image:
        return bytes(image)
    if not uri:
        raise ImageProblem("empty_image", "row has neither image bytes nor an image_uri")
    from deepperception.sources.fs import read_uri

    try:
        data = read_uri(uri)
    except FileNotFoundError:
        raise ImageProblem("missing_file", f"{uri} does not exist") from None
    except OSError as exc:
        raise ImageProblem("missing_file", f"{uri} cannot be read: {exc}") from None
    if not data:
        raise ImageProblem("empty_image", f"{uri} is empty")
    return data


def open_photo(data: bytes, *, crop_bottom: int = 0, name: str = "image") -> Image.Image:
    """Decode a photo (RGB), refusing decompression bombs by their header before any pixel is
    decoded (PIL's ``Image.MAX_IMAGE_PIXELS``), and cut ``crop_bottom`` pixels off the bottom
    (FGVC-Aircraft's copyright banner).

    >>> open_photo(b"GIF89a garbage")
    Traceback (most recent call last):
    ...
    deepperception.images.ImageProblem: corrupt_image: image does not decode: ...
    """
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageProblem("decompression_bomb", f"{name}: {exc}") from None
    except Exception as exc:
        raise ImageProblem("corrupt_image", f"image does not decode: {type(exc).__name__}: {exc} ({name})") from None
    with im:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and im.width * im.height > limit:
            raise ImageProblem("decompression_bomb", f"{name}: {im.width}x{im.height} pixels is more than "
                                                     f"PIL's limit of {limit}")
        try:
            im.load()
            rgb = im.convert("RGB")
        except Exception as exc:  # truncated files fail here, not at open
            raise ImageProblem("corrupt_image", f"image does not decode: {type(exc).__name__}: {exc} ({name})") from None
    if crop_bottom:
        if crop_bottom >= rgb.height:
            raise ImageProblem("corrupt_image", f"{name}: {rgb.height} px tall, cannot cut {crop_bottom} px banner")
        rgb = rgb.crop((0, 0, rgb.width, rgb.height - crop_bottom))
    return rgb


def request_bytes(data: bytes, photo: Image.Image, crop_bottom: int = 0) -> bytes:
    """What to send a model: the original file when nothing was cut off (no re-encode), else the
    cropped photo as a high-quality JPEG (for the request only; nothing is stored)."""
    if not crop_bottom:
        return data
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=95)
    return buf.getvalue()
