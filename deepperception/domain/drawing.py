"""Sprite painters for the synthetic categories.

Each painter draws ONE entity, nose/head up or facing left, on a transparent square RGBA canvas
of ``SPRITE`` pixels. Entities of a category share the silhouette and differ only in the
attributes the painter reads (stripe counts, fin shapes, shades...), which is what makes
telling them apart a knowledge problem rather than a shape-classification one.

Painters draw without anti-aliasing so alpha is exactly 0 or 255; the renderer relies on that to
compute a pixel-exact tight box. Lines are at least 3 px wide so they survive down-scaling.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

from PIL import Image, ImageChops, ImageDraw

SPRITE = 128
OUTLINE = (38, 38, 42, 255)
DARK = (30, 30, 34, 255)

Attributes = Mapping[str, object]
Painter = Callable[[Image.Image, Attributes], None]

GLIDER_BODY = {"white": (246, 246, 240), "sky": (196, 218, 242), "sand": (232, 214, 170)}
BEETLE_SHELL = {"crimson": (176, 28, 44), "amber": (214, 140, 30), "jade": (40, 150, 96)}
KITE_PALETTE = {
    "red-yellow": ((214, 48, 40), (246, 206, 60)),
    "blue-white": ((40, 86, 196), (240, 240, 236)),
    "green-orange": ((52, 150, 70), (240, 136, 36)),
}
FISH_BODY = {"silver": (196, 204, 212), "gold": (226, 178, 60), "olive": (132, 140, 70)}
BADGE_RIM = {"gold": (218, 172, 40), "silver": (178, 184, 192)}
MOTH_WING = {"ivory": (238, 228, 196), "dusk": (150, 112, 84), "sage": (150, 176, 130)}


def _rgba(rgb: tuple[int, int, int]) -> tuple[int, int, int, int]:
    return (*rgb, 255)


def _mirror(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(SPRITE - x, y) for x, y in points]


def paint_glider(img: Image.Image, a: Attributes) -> None:
    """Top view: fuselage, wings (straight/swept/tapered), wingtips, striped tailplane."""
    d = ImageDraw.Draw(img)
    body = _rgba(GLIDER_BODY[str(a["body"])])
    wing = {
        "straight": [(64, 44), (8, 44), (8, 58), (64, 60)],
        "swept": [(64, 40), (10, 62), (10, 74), (64, 56)],
        "tapered": [(64, 40), (8, 50), (8, 56), (64, 62)],
    }[str(a["wing_shape"])]
    for poly in (wing, _mirror(wing)):
        d.polygon(poly, fill=body, outline=OUTLINE, width=2)
    tip_y = {"straight": 44, "swept": 62, "tapered": 50}[str(a["wing_shape"])]
    for x in (8, SPRITE - 16):
        if a["wingtip"] == "winglet":
            d.rectangle((x, tip_y - 10, x + 7, tip_y + 12), fill=DARK)
        elif a["wingtip"] == "pod":
            d.ellipse((x - 3, tip_y - 4, x + 10, tip_y + 16), fill=(200, 40, 40, 255), outline=OUTLINE, width=2)
    tail = (36, 100, 92, 114)
    d.rectangle(tail, fill=body, outline=OUTLINE, width=2)
    n = int(a["tail_stripes"])
    for i in range(n):
        x = 64 - (n - 1) * 8 + i * 16 - 3
        d.rectangle((x, 102, x + 6, 112), fill=(206, 30, 36, 255))
    d.ellipse((56, 8, 72, 120), fill=body, outline=OUTLINE, width=2)
    d.ellipse((59, 18, 69, 36), fill=(70, 110, 150, 255))


def paint_beetle(img: Image.Image, a: Attributes) -> None:
    """Top view: legs, antennae (straight/clubbed/elbowed), shell with spots and optional band."""
    d = ImageDraw.Draw(img)
    for i, y in enumerate((52, 72, 92)):
        d.line((36, y, 14, y + 8 * (i - 1) - 6), fill=DARK, width=4)
        d.line((92, y, 114, y + 8 * (i - 1) - 6), fill=DARK, width=4)
    style = str(a["antenna"])
    for s in (-1, 1):
        x0 = 64 + s * 6
        if style == "elbowed":
            d.line((x0, 16, x0 + s * 8, 8, x0 + s * 24, 6), fill=DARK, width=3)
        else:
            d.line((x0, 16, x0 + s * 20, 2), fill=DARK, width=3)
            if style == "clubbed":
                cx = x0 + s * 20
                d.ellipse((cx - 5, 0, cx + 5, 9), fill=DARK)
    d.ellipse((52, 12, 76, 34), fill=DARK)
    shell = _rgba(BEETLE_SHELL[str(a["shell"])])
    d.ellipse((34, 28, 94, 122), fill=shell, outline=OUTLINE, width=2)
    d.line((64, 40, 64, 120), fill=OUTLINE, width=3)
    if a["band"] == "banded":
        d.rectangle((40, 44, 88, 52), fill=(245, 245, 240, 255))
    spots = int(a["spots"])
    rows = [60, 82, 104][: spots // 2]
    for y in rows:
        for x in (48, 80):
            d.ellipse((x - 6, y - 6, x + 6, y + 6), fill=DARK)


def paint_kite(img: Image.Image, a: Attributes) -> None:
    """Kite face (diamond/delta/hexagon) in a split or quartered palette, spars, bowed tail."""
    shape = {
        "diamond": [(64, 2), (110, 44), (64, 96), (18, 44)],
        "delta": [(64, 2), (118, 78), (64, 66), (10, 78)],
        "hexagon": [(40, 4), (88, 4), (112, 48), (88, 92), (40, 92), (16, 48)],
    }[str(a["shape"])]
    c1, c2 = (_rgba(c) for c in KITE_PALETTE[str(a["palette"])])
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).polygon(shape, fill=255)
    second = Image.new("L", img.size, 0)
    sd = ImageDraw.Draw(second)
    sd.rectangle((64, 0, SPRITE, SPRITE), fill=255)
    if a["panels"] == "quartered":
        sd.rectangle((0, 48, 63, SPRITE), fill=255)
        sd.rectangle((64, 48, SPRITE, SPRITE), fill=0)
    img.paste(Image.new("RGBA", img.size, c1), (0, 0), mask)
    img.paste(Image.new("RGBA", img.size, c2), (0, 0), ImageChops.multiply(mask, second))
    d = ImageDraw.Draw(img)
    d.polygon(shape, outline=OUTLINE, width=2)
    bottom = max(shape, key=lambda p: p[1])
    if a["spars"] == "cross":
        top = min(shape, key=lambda p: p[1])
        d.line((64, top[1], 64, bottom[1]), fill=DARK, width=3)
        d.line((min(p[0] for p in shape), 46, max(p[0] for p in shape), 46), fill=DARK, width=3)
    tail_top = 96 if a["shape"] != "delta" else 66
    d.line((64, tail_top, 64, 126), fill=DARK, width=2)
    n = int(a["bows"])
    for i in range(n):
        y = tail_top + (i + 1) * (126 - tail_top) // (n + 1)
        d.polygon([(56, y - 4), (72, y + 4), (72, y - 4), (56, y + 4)], fill=c1)


def paint_fish(img: Image.Image, a: Attributes) -> None:
    """Side view facing left: tail (forked/rounded/square), dorsal fin, banded body."""
    d = ImageDraw.Draw(img)
    body = _rgba(FISH_BODY[str(a["body"])])
    tail = str(a["tail"])
    if tail == "forked":
        d.polygon([(92, 64), (124, 34), (112, 64), (124, 94)], fill=body, outline=OUTLINE, width=2)
    elif tail == "rounded":
        d.pieslice((78, 38, 126, 90), start=-70, end=70, fill=body, outline=OUTLINE, width=2)
    else:
        d.polygon([(92, 64), (120, 42), (120, 86)], fill=body, outline=OUTLINE, width=2)
    dorsal = {
        "tall": [(44, 44), (60, 10), (76, 44)],
        "low": [(40, 44), (58, 32), (80, 44)],
        "notched": [(40, 44), (48, 24), (58, 38), (68, 24), (78, 44)],
    }[str(a["dorsal"])]
    d.polygon(dorsal, fill=body, outline=OUTLINE, width=2)
    d.ellipse((14, 38, 100, 92), fill=body, outline=OUTLINE, width=2)
    for i in range(int(a["bands"])):
        x = 44 + i * 14
        d.rectangle((x, 44, x + 5, 86), fill=(44, 44, 60, 255))
    d.ellipse((24, 54, 34, 64), fill=DARK)


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        ang = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return pts


def paint_badge(img: Image.Image, a: Attributes) -> None:
    """Shield/round/hexagonal badge with a coloured rim, chevrons and an optional star."""
    d = ImageDraw.Draw(img)
    rim = _rgba(BADGE_RIM[str(a["rim"])])
    field = (40, 60, 120, 255)
    outline = str(a["outline"])
    if outline == "round":
        d.ellipse((8, 8, 120, 120), fill=rim, outline=OUTLINE, width=2)
        d.ellipse((18, 18, 110, 110), fill=field)
    elif outline == "hexagon":
        hexa = [(64 + 58 * math.cos(math.pi / 6 + k * math.pi / 3), 64 + 58 * math.sin(math.pi / 6 + k * math.pi / 3)) for k in range(6)]
        inner = [(64 + 0.82 * (x - 64), 64 + 0.82 * (y - 64)) for x, y in hexa]
        d.polygon(hexa, fill=rim, outline=OUTLINE, width=2)
        d.polygon(inner, fill=field)
    else:
        shield = [(12, 8), (116, 8), (116, 64), (64, 124), (12, 64)]
        inner = [(22, 18), (106, 18), (106, 60), (64, 110), (22, 60)]
        d.polygon(shield, fill=rim, outline=OUTLINE, width=2)
        d.polygon(inner, fill=field)
    for i in range(int(a["chevrons"])):
        y = 66 + i * 13
        d.line((36, y, 64, y + 14, 92, y), fill=rim, width=6)
    if a["star"] == "star":
        d.polygon(_star(64, 42, 15), fill=rim)


def paint_moth(img: Image.Image, a: Attributes) -> None:
    """Top view: fore/hind wings (smooth or scalloped edge), optional hindwing tails, eyespots."""
    d = ImageDraw.Draw(img)
    wing = _rgba(MOTH_WING[str(a["wing"])])
    fore = [(64, 30), (6, 10), (14, 60), (64, 62)]
    hind = [(64, 60), (20, 66), (30, 104), (64, 84)]
    if a["tails"] == "tailed":
        for poly in ([(34, 96), (28, 126), (42, 100)], _mirror([(34, 96), (28, 126), (42, 100)])):
            d.polygon(poly, fill=wing, outline=OUTLINE, width=2)
    for poly in (fore, _mirror(fore), hind, _mirror(hind)):
        d.polygon(poly, fill=wing, outline=OUTLINE, width=2)
    if a["edge"] == "scalloped":
        for t in (0.2, 0.45, 0.7):
            x, y = 6 + (14 - 6) * t, 10 + (60 - 10) * t
            for cx in (x, SPRITE - x):
                d.ellipse((cx - 5, y - 5, cx + 5, y + 5), fill=DARK)
    for i in range(int(a["eyespots"])):
        cy = 76 + i * 14
        for cx in (40, SPRITE - 40):
            d.ellipse((cx - 6, cy - 6, cx + 6, cy + 6), fill=(250, 250, 240, 255))
            d.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=DARK)
    d.ellipse((58, 22, 70, 100), fill=(70, 56, 46, 255), outline=OUTLINE, width=2)


PAINTERS: dict[str, Painter] = {
    "glider": paint_glider,
    "beetle": paint_beetle,
    "kite": paint_kite,
    "fish": paint_fish,
    "badge": paint_badge,
    "moth": paint_moth,
}
