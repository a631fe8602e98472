"""A synthetic fine-grained domain that stands in for FGVC-Aircraft, Stanford Cars, iNat...

Each category (glider, beetle, kite, fish, badge, moth) has entities that share a silhouette
and differ only in a few subtle attributes. "Mining" picks distinct attribute combinations,
gives each a made-up proper name and writes its knowledge card; the name carries no hint of
the attributes, so grounding "the Aster Mk-II glider" needs the card's knowledge, exactly the
knowledge-intensive setting of KVG. Seen categories feed training; unseen ones are only benched.
"""

from __future__ import annotations

import itertools
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deepperception.domain.categories import CATEGORIES, CategorySpec, get_category
from deepperception.domain.entity import Entity, entities_from_table, entities_to_table
from deepperception.domain.render import render_entity
from deepperception.domain.seeding import rng_for

__all__ = [
    "Entity",
    "SyntheticDomainConfig",
    "entities_from_table",
    "entities_to_table",
    "knowledge_card",
    "mine_entities",
    "render_entity",
]

NAME_STEMS = (
    "Aster", "Brisa", "Corvin", "Dalen", "Elara", "Fenwick", "Galen", "Halden", "Isolde", "Juno",
    "Kestrel", "Lumen", "Mirel", "Nerin", "Orrin", "Pallas", "Quill", "Rowan", "Sable", "Tarn",
    "Ulric", "Vesper", "Wren", "Yarrow", "Zephyr", "Calder", "Merrow", "Thistle",
)
NAME_MARKS = ("Mk-I", "Mk-II", "Mk-III", "S", "LX", "Pro", "7", "9", "Alpha", "Nova")


class SyntheticDomainConfig(BaseModel):
    """Which categories exist, which are held out, and how many entities each has."""

    model_config = ConfigDict(extra="forbid")

    seen_categories: list[str] = Field(
        default_factory=lambda: ["glider", "beetle", "kite", "fish"],
        description="Categories used for training (the paper's aircraft/car/reptilia/bird/food).",
    )
    unseen_categories: list[str] = Field(
        default_factory=lambda: ["badge", "moth"],
        description="Held-out categories, only ever benchmarked (the paper's dog/mollusca/...).",
    )
    entities_per_category: int = Field(
        8, ge=2, description="Entities mined per category; composites need at least 2 per category."
    )
    min_attribute_distance: int = Field(
        1, ge=1, description="Every two entities of a category differ in at least this many attributes (1: any two "
        "distinct combinations). Larger values make entities easier to tell apart: fewer, more redundant cues to learn "
        "(the CPU demo uses 2 so a tiny random-init model can learn the domain in minutes).")
    seed: int = Field(0, description="Seed for attribute combinations and names.")

    @model_validator(mode="after")
    def _check(self) -> "SyntheticDomainConfig":
        names = self.seen_categories + self.unseen_categories
        if not self.seen_categories and not self.unseen_categories:
            raise ValueError("at least one category is required")
        dup = [c for c, n in Counter(names).items() if n > 1]
        if dup:
            raise ValueError(f"categories listed twice (or both seen and unseen): {dup}")
        unknown = [c for c in names if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown synthetic categories {unknown}; known: {sorted(CATEGORIES)}")
        for c in names:
            cap = CATEGORIES[c].num_variants
            if self.entities_per_category > cap:
                raise ValueError(f"category {c!r} allows at most {cap} distinct entities, asked for {self.entities_per_category}")
            n = len(_pick_combos(CATEGORIES[c], self.seed, self.entities_per_category, self.min_attribute_distance))
            if n < self.entities_per_category:
                raise ValueError(f"category {c!r}: only {n} entities differ pairwise in >= {self.min_attribute_distance} "
                                 f"attributes, asked for {self.entities_per_category}")
        return self


def attribute_distance(a: dict, b: dict) -> int:
    """How many attributes two entities' values differ in (Hamming distance).

    >>> attribute_distance({"x": 1, "y": "a"}, {"x": 2, "y": "a"})
    1
    """
    return sum(a[k] != b[k] for k in a)


def _pick_combos(spec: CategorySpec, seed: int, n: int, min_distance: int) -> list[dict]:
    """Up to ``n`` attribute combinations in a seeded shuffled order, each kept only if it differs
    from every one kept before in >= ``min_distance`` attributes (greedy, deterministic).

    >>> len(_pick_combos(get_category("glider"), 0, 8, 3))  # at most 6 gliders differ in 3 of 4 attributes
    6
    """
    axes = list(spec.axes)
    combos = [dict(zip(axes, values)) for values in itertools.product(*(spec.axes[a] for a in axes))]
    rng_for("combos", seed, spec.name).shuffle(combos)
    chosen: list[dict] = []
    for c in combos:
        if all(attribute_distance(c, o) >= min_distance for o in chosen):
            chosen.append(c)
            if len(chosen) == n:
                break
    return chosen


def _distinguishing_attribute(attrs: dict, siblings: list[dict], axes: list[str]) -> str:
    """The attribute whose value the fewest siblings share (ties: first axis), i.e. the best tell."""
    return min(axes, key=lambda a: (sum(s[a] == attrs[a] for s in siblings), axes.index(a)))


def knowledge_card(spec: CategorySpec, name: str, attrs: dict, siblings: list[dict]) -> str:
    """Two sentences: every feature, then the single feature that best separates it from its
    category siblings (the "knowledge" a student must learn).

    >>> spec = get_category("fish")
    >>> a = {"tail": "forked", "dorsal": "tall", "bands": 2, "body": "gold"}
    >>> b = {"tail": "forked", "dorsal": "low", "bands": 2, "body": "gold"}
    >>> knowledge_card(spec, "Orrin S fish", a, [b])
    'The Orrin S fish has a deeply forked tail, a tall pointed dorsal fin, two dark bands across its flank and golden scales. Among fish it is best told apart by a tall pointed dorsal fin.'
    """
    axes = list(spec.axes)
    phrases = [spec.phrase(a, attrs[a]) for a in axes]
    listed = ", ".join(phrases[:-1]) + " and " + phrases[-1] if len(phrases) > 1 else phrases[0]
    card = f"The {name} has {listed}."
    if siblings:
        tell = _distinguishing_attribute(attrs, siblings, axes)
        card += f" Among {spec.plural} it is best told apart by {spec.phrase(tell, attrs[tell])}."
    return card


def mine_entities(cfg: SyntheticDomainConfig) -> list[Entity]:
    """Pick ``entities_per_category`` distinct attribute combinations per category, name them
    and write their cards. Deterministic in ``cfg``; ids are ``<category>/<nn>``."""
    rng = rng_for("names", cfg.seed)
    names = [f"{s} {m}" for s, m in itertools.product(NAME_STEMS, NAME_MARKS)]
    rng.shuffle(names)
    name_iter = iter(names)
    out: list[Entity] = []
    splits = [(c, "seen") for c in cfg.seen_categories] + [(c, "unseen") for c in cfg.unseen_categories]
    for category, split in splits:
        spec = get_category(category)
        chosen = _pick_combos(spec, cfg.seed, cfg.entities_per_category, cfg.min_attribute_distance)
        for i, attrs in enumerate(chosen):
            name = f"{next(name_iter)} {spec.noun}"
            siblings = [c for j, c in enumerate(chosen) if j != i]
            out.append(
                Entity(
                    entity_id=f"{category}/{i:02d}",
                    category=category,
                    name=name,
                    split=split,  # type: ignore[arg-type]
                    knowledge_card=knowledge_card(spec, name, attrs, siblings),
                    attributes=attrs,
                )
            )
    return out
