from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from deepperception.domain import (
    ENTITY_SCHEMA,
    SyntheticDomainConfig,
    entities_from_table,
    entities_to_table,
    mine_entities,
    render_entity,
)
from deepperception.domain.categories import CATEGORIES, get_category
from deepperception.domain.render import _sprite
from deepperception.errors import InputDataError


@pytest.fixture(scope="module")
def entities():
    return mine_entities(SyntheticDomainConfig())


def test_mining_is_deterministic_and_seeded(entities):
    assert mine_entities(SyntheticDomainConfig()) == entities
    other = mine_entities(SyntheticDomainConfig(seed=1))
    assert [e.name for e in other] != [e.name for e in entities]


def test_default_domain_shape(entities):
    assert len(entities) == 6 * 8
    assert len({e.entity_id for e in entities}) == len(entities)
    assert len({e.name for e in entities}) == len(entities)
    splits = {e.category: e.split for e in entities}
    assert splits == {"glider": "seen", "beetle": "seen", "kite": "seen", "fish": "seen", "badge": "unseen", "moth": "unseen"}
    assert entities[0].entity_id == "glider/00"


def test_entities_of_a_category_differ_in_attributes_and_pixels(entities):
    for cat, group in itertools.groupby(entities, key=lambda e: e.category):
        group = list(group)
        combos = [json.dumps(e.attributes, sort_keys=True) for e in group]
        assert len(set(combos)) == len(group), cat
        sprites = [np.asarray(_sprite(cat, c)) for c in combos]
        for a, b in itertools.combinations(range(len(group)), 2):
            sa, sb = sprites[a], sprites[b]
            assert sa.shape != sb.shape or not np.array_equal(sa, sb), (group[a].name, group[b].name)


def test_knowledge_card_states_every_attribute(entities):
    for e in entities:
        spec = get_category(e.category)
        for attr, value in e.attributes.items():
            assert spec.phrase(attr, value) in e.knowledge_card, (e.entity_id, attr)
        assert e.knowledge_card.startswith(f"The {e.name} has ")
        # The name itself carries no attribute: knowledge is needed to ground it.
        for attr, value in e.attributes.items():
            assert str(value) not in e.name.replace(spec.noun, "")


def test_render_is_deterministic_and_jittered(entities):
    e = entities[3]
    a, box_a = render_entity(e, rng_seed=5, size=112)
    b, box_b = render_entity(e, rng_seed=5, size=112)
    c, box_c = render_entity(e, rng_seed=6, size=112)
    assert a.tobytes() == b.tobytes() and box_a == box_b
    assert a.tobytes() != c.tobytes()
    assert a.mode == "RGB" and a.size == (112, 112)


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_render_box_is_tight(entities, category):
    for e in [x for x in entities if x.category == category][:3]:
        for seed in range(3):
            img, (x1, y1, x2, y2) = render_entity(e, rng_seed=seed, size=96, noise=0.0)
            arr = np.asarray(img).astype(int)
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
            # Background is a solid colour without noise: find it outside the box.
            mask = np.ones(arr.shape[:2], bool)
            mask[int(y1):int(y2), int(x1):int(x2)] = False
            bg = arr[mask][0] if mask.any() else None
            if bg is None:
                continue
            assert (arr[mask] == bg).all(), "pixels outside the box must be background"
            fg = np.nonzero((np.abs(arr - bg).sum(-1) > 0))
            assert (fg[1].min(), fg[0].min(), fg[1].max() + 1, fg[0].max() + 1) == (x1, y1, x2, y2)


def test_config_validation():
    with pytest.raises(ValidationError, match="unknown synthetic categories"):
        SyntheticDomainConfig(seen_categories=["zeppelin"])
    with pytest.raises(ValidationError, match="listed twice"):
        SyntheticDomainConfig(seen_categories=["fish"], unseen_categories=["fish"])
    with pytest.raises(ValidationError, match="at most"):
        SyntheticDomainConfig(entities_per_category=1000)
    with pytest.raises(ValidationError):
        SyntheticDomainConfig(entity_count=3)  # extra keys are refused
    cfg = SyntheticDomainConfig(seen_categories=["kite"], unseen_categories=[], entities_per_category=3)
    assert {e.category for e in mine_entities(cfg)} == {"kite"}


def test_table_round_trip(entities):
    table = entities_to_table(entities)
    assert table.schema == ENTITY_SCHEMA
    assert entities_from_table(table) == entities


def test_table_errors_name_row_and_field(entities):
    table = entities_to_table(entities[:3])
    with pytest.raises(InputDataError, match="field=knowledge_card"):
        entities_from_table(table.drop_columns(["knowledge_card"]))
    bad = table.set_column(5, "attributes", pa.array(["{}", "{not json", "{}"]))
    with pytest.raises(InputDataError, match=r"row=1 field=attributes"):
        entities_from_table(bad)
    bad_split = table.set_column(3, "split", pa.array(["seen", "seen", "maybe"]))
    with pytest.raises(InputDataError, match=r"row=2 field=split"):
        entities_from_table(bad_split)


@pytest.mark.parametrize("distance", [2, 3])
def test_min_attribute_distance_holds_for_every_pair(distance):
    from deepperception.domain.synthetic import attribute_distance

    cfg = SyntheticDomainConfig(entities_per_category=4, min_attribute_distance=distance)
    ents = mine_entities(cfg)
    assert len(ents) == 6 * 4
    for _, group in itertools.groupby(ents, key=lambda e: e.category):
        group = list(group)
        for a, b in itertools.combinations(group, 2):
            assert attribute_distance(a.attributes, b.attributes) >= distance, (a.name, b.name)
    assert mine_entities(cfg) == ents


def test_default_distance_keeps_the_original_domain(entities):
    assert mine_entities(SyntheticDomainConfig(min_attribute_distance=1)) == entities


def test_impossible_distance_is_refused_at_config_time():
    with pytest.raises(ValidationError, match="differ pairwise in >= 3 attributes"):
        SyntheticDomainConfig(entities_per_category=8, min_attribute_distance=3)
