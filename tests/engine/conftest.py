"""Shared fixtures for the data-engine tests: one small synthetic domain, built once."""

from __future__ import annotations

import pytest

from deepperception.domain import SyntheticDomainConfig, entities_to_table, mine_entities
from deepperception.engine.collection import CollectionConfig, collect_images
from deepperception.engine.labeling import OracleLabeler, label_images


@pytest.fixture(scope="session")
def entities():
    return mine_entities(SyntheticDomainConfig(entities_per_category=5, seed=3))


@pytest.fixture(scope="session")
def entity_table(entities):
    return entities_to_table(entities)


@pytest.fixture(scope="session")
def images(entity_table):
    return collect_images(entity_table, CollectionConfig(images_per_entity=4, image_size=96, test_fraction=0.3, seed=1))


@pytest.fixture(scope="session")
def labeled(images):
    return label_images(images, OracleLabeler())
