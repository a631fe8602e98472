"""The synthetic categories: attribute vocabularies, how each value reads in prose, and painters.

An entity is one combination of attribute values; a knowledge card is those values written as
prose. Keeping vocabulary, prose and painter side by side means a card can never describe a
feature the renderer does not draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from deepperception.domain.drawing import PAINTERS, Painter

_COUNT = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


@dataclass(frozen=True)
class CategorySpec:
    """One fine-grained category: its noun, attribute axes and the prose for every value."""

    name: str
    noun: str
    plural: str
    axes: Mapping[str, tuple[object, ...]]
    phrases: Mapping[str, Mapping[object, str]] = field(repr=False)
    painter: Painter = field(repr=False)

    @property
    def num_variants(self) -> int:
        """How many distinct entities the axes allow."""
        n = 1
        for values in self.axes.values():
            n *= len(values)
        return n

    def phrase(self, attribute: str, value: object) -> str:
        """The prose for one attribute value, e.g. ``three red stripes on its tailplane``."""
        return self.phrases[attribute][value]


def _counted(n_values: tuple[int, ...], singular: str, plural: str, where: str) -> dict[object, str]:
    out: dict[object, str] = {}
    for n in n_values:
        word = _COUNT[n]
        out[n] = f"{word} {singular if n == 1 else plural}{where}"
    return out


CATEGORIES: dict[str, CategorySpec] = {
    "glider": CategorySpec(
        name="glider",
        noun="glider",
        plural="gliders",
        axes={"wing_shape": ("straight", "swept", "tapered"), "wingtip": ("plain", "winglet", "pod"),
              "tail_stripes": (1, 2, 3), "body": ("white", "sky", "sand")},
        phrases={
            "wing_shape": {"straight": "straight, square-cut wings", "swept": "swept-back wings",
                           "tapered": "slender tapered wings"},
            "wingtip": {"plain": "plain wingtips", "winglet": "dark upturned winglets",
                        "pod": "red pods at the wingtips"},
            "tail_stripes": _counted((1, 2, 3), "red stripe", "red stripes", " on its tailplane"),
            "body": {"white": "a white fuselage", "sky": "a pale sky-blue fuselage", "sand": "a sand-coloured fuselage"},
        },
        painter=PAINTERS["glider"],
    ),
    "beetle": CategorySpec(
        name="beetle",
        noun="beetle",
        plural="beetles",
        axes={"spots": (2, 4, 6), "shell": ("crimson", "amber", "jade"),
              "antenna": ("straight", "clubbed", "elbowed"), "band": ("plain", "banded")},
        phrases={
            "spots": _counted((2, 4, 6), "black spot", "black spots", " on its shell"),
            "shell": {"crimson": "a crimson shell", "amber": "an amber shell", "jade": "a jade-green shell"},
            "antenna": {"straight": "straight antennae", "clubbed": "club-tipped antennae",
                        "elbowed": "elbowed antennae"},
            "band": {"plain": "no band behind the head", "banded": "a white band behind the head"},
        },
        painter=PAINTERS["beetle"],
    ),
    "kite": CategorySpec(
        name="kite",
        noun="kite",
        plural="kites",
        axes={"shape": ("diamond", "delta", "hexagon"), "panels": ("split", "quartered"),
              "bows": (2, 3, 4), "spars": ("cross", "hidden"),
              "palette": ("red-yellow", "blue-white", "green-orange")},
        phrases={
            "shape": {"diamond": "a diamond-shaped sail", "delta": "a swept delta sail",
                      "hexagon": "a six-sided sail"},
            "panels": {"split": "a sail split into two colour halves", "quartered": "a quartered sail"},
            "bows": _counted((2, 3, 4), "bow", "bows", " on its tail"),
            "spars": {"cross": "a visible dark cross spar", "hidden": "no visible spars"},
            "palette": {"red-yellow": "red and yellow panels", "blue-white": "blue and white panels",
                        "green-orange": "green and orange panels"},
        },
        painter=PAINTERS["kite"],
    ),
    "fish": CategorySpec(
        name="fish",
        noun="fish",
        plural="fish",
        axes={"tail": ("forked", "rounded", "square"), "dorsal": ("tall", "low", "notched"),
              "bands": (0, 1, 2, 3), "body": ("silver", "gold", "olive")},
        phrases={
            "tail": {"forked": "a deeply forked tail", "rounded": "a rounded fan tail",
                     "square": "a square-cut tail"},
            "dorsal": {"tall": "a tall pointed dorsal fin", "low": "a low dorsal fin",
                       "notched": "a notched double dorsal fin"},
            "bands": _counted((0, 1, 2, 3), "dark band", "dark bands", " across its flank"),
            "body": {"silver": "silver scales", "gold": "golden scales", "olive": "olive scales"},
        },
        painter=PAINTERS["fish"],
    ),
    "badge": CategorySpec(
        name="badge",
        noun="badge",
        plural="badges",
        axes={"outline": ("shield", "round", "hexagon"), "chevrons": (1, 2, 3), "star": ("star", "none"),
              "rim": ("gold", "silver")},
        phrases={
            "outline": {"shield": "a shield outline", "round": "a round outline", "hexagon": "a hexagonal outline"},
            "chevrons": _counted((1, 2, 3), "chevron", "chevrons", " on a blue field"),
            "star": {"star": "a star above the chevrons", "none": "no star"},
            "rim": {"gold": "a gold rim", "silver": "a silver rim"},
        },
        painter=PAINTERS["badge"],
    ),
    "moth": CategorySpec(
        name="moth",
        noun="moth",
        plural="moths",
        axes={"eyespots": (0, 1, 2), "edge": ("smooth", "scalloped"), "tails": ("none", "tailed"),
              "wing": ("ivory", "dusk", "sage")},
        phrases={
            "eyespots": _counted((0, 1, 2), "eyespot", "eyespots", " on each hindwing"),
            "edge": {"smooth": "smooth forewing edges", "scalloped": "dark scallops along the forewing edge"},
            "tails": {"none": "no hindwing tails", "tailed": "long hindwing tails"},
            "wing": {"ivory": "ivory wings", "dusk": "dusky brown wings", "sage": "sage-green wings"},
        },
        painter=PAINTERS["moth"],
    ),
}


def get_category(name: str) -> CategorySpec:
    """Look a category up, listing the known ones when it is missing.

    >>> get_category("glider").noun
    'glider'
    """
    try:
        return CATEGORIES[name]
    except KeyError:
        raise KeyError(f"unknown synthetic category {name!r}; known: {sorted(CATEGORIES)}") from None


def describe(category: str, attribute: str, value: object) -> str:
    """Prose for an attribute value; falls back to ``attribute: value`` for categories (e.g. real
    data) that have no vocabulary here, so CoT templates still work on them.

    >>> describe("fish", "bands", 2)
    'two dark bands across its flank'
    >>> describe("aircraft", "engine_count", 4)
    'engine count: 4'
    """
    spec = CATEGORIES.get(category)
    if spec is not None and attribute in spec.phrases and value in spec.phrases[attribute]:
        return spec.phrase(attribute, value)
    return f"{attribute.replace('_', ' ')}: {value}"
