"""Rendering one entity into a small RGB photo with its true tight box.

The painter draws a canonical sprite once per entity (cached); every photo then jitters scale,
position, background tint and noise, and a small colour gain. The box is read off the pasted
sprite's binary alpha, so it is pixel-exact: ``(x1, y1, x2, y2)`` with exclusive right/bottom
edges, the convention of ``PIL.Image.getbbox`` and of ``boxes.pixels_to_qwen``.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
from PIL import Image

from deepperception.domain.categories import get_category
from deepperception.domain.drawing import SPRITE
from deepperception.domain.entity import Entity
from deepperception.domain.seeding import stable_seed

BoxPx = tuple[float, float, float, float]


@lru_cache(maxsize=512)
def _sprite(category: str, attributes_json: str) -> Image.Image:
    img = Image.new("RGBA", (SPRITE, SPRITE), (0, 0, 0, 0))
    get_category(category).painter(img, json.loads(attributes_json))
    bbox = img.getchannel("A").getbbox()
    if bbox is None:  # a painter bug, never data: fail loudly
        raise RuntimeError(f"painter for {category} drew nothing for {attributes_json}")
    return img.crop(bbox)


def _background(rng: np.random.Generator, size: int, noise: float) -> np.ndarray:
    # Light, low-saturation tints keep the dark sprite outlines visible on every background.
    base = rng.uniform(175, 250, size=3)
    bg = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    if noise > 0:
        bg = bg + rng.uniform(-noise, noise, size=(size, size, 1)).astype(np.float32)
    return np.clip(bg, 0, 255).astype(np.uint8)


def render_entity(
    entity: Entity,
    rng_seed: int,
    size: int = 128,
    *,
    scale_range: tuple[float, float] = (0.5, 0.9),
    noise: float = 10.0,
) -> tuple[Image.Image, BoxPx]:
    """Render ``entity`` on a ``size`` x ``size`` RGB image; return it and the tight pixel box.

    The same ``(entity, rng_seed, size)`` always gives identical pixels.

    >>> from deepperception.domain.synthetic import SyntheticDomainConfig, mine_entities
    >>> e = mine_entities(SyntheticDomainConfig(entities_per_category=2))[0]
    >>> img, box = render_entity(e, rng_seed=1, size=96)
    >>> img.size, 0 <= box[0] < box[2] <= 96 and 0 <= box[1] < box[3] <= 96
    ((96, 96), True)
    """
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    rng = np.random.default_rng(stable_seed(entity.entity_id, rng_seed, size))
    sprite = _sprite(entity.category, json.dumps(entity.attributes, sort_keys=True))
    longest = float(rng.uniform(*scale_range)) * size
    ratio = longest / max(sprite.size)
    w = max(4, min(size, round(sprite.width * ratio)))
    h = max(4, min(size, round(sprite.height * ratio)))
    scaled = sprite.resize((w, h), Image.Resampling.BILINEAR)
    rgb = np.asarray(scaled.convert("RGB"), dtype=np.float32) * rng.uniform(0.95, 1.05, size=3)
    alpha = np.asarray(scaled.getchannel("A")) >= 128
    ys, xs = np.nonzero(alpha)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    rgb, alpha = rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1]
    h, w = alpha.shape
    left = int(rng.integers(0, size - w + 1))
    top = int(rng.integers(0, size - h + 1))
    canvas = _background(rng, size, noise)
    region = canvas[top : top + h, left : left + w]
    region[alpha] = np.clip(rgb[alpha], 0, 255).astype(np.uint8)
    return Image.fromarray(canvas, "RGB"), (float(left), float(top), float(left + w), float(top + h))
