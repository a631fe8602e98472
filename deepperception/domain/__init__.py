"""Fine-grained entity domains: the synthetic one (offline, CPU-cheap) and its table form."""

from deepperception.domain.entity import ENTITY_SCHEMA, Entity, entities_from_table, entities_to_table
from deepperception.domain.render import render_entity
from deepperception.domain.synthetic import SyntheticDomainConfig, mine_entities

__all__ = [
    "ENTITY_SCHEMA",
    "Entity",
    "SyntheticDomainConfig",
    "entities_from_table",
    "entities_to_table",
    "mine_entities",
    "render_entity",
]
