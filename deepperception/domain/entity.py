"""The ``Entity`` record and its Arrow table form.

Entities are the unit of knowledge: a proper name, the category it belongs to, whether that
category is seen in training, the prose knowledge card a teacher may use, and the structured
attributes the card was written from. Tables carry ``attributes`` as a JSON string so the schema
stays flat and identical across categories.
"""

from __future__ import annotations

import json
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from deepperception.tables import require_columns
from deepperception.errors import InputDataError

Split = Literal["seen", "unseen"]

ENTITY_SCHEMA = pa.schema(
    [
        pa.field("entity_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("knowledge_card", pa.string(), nullable=False),
        pa.field("attributes", pa.string(), nullable=False),
    ]
)


class Entity(BaseModel):
    """One fine-grained entity (an aircraft variant, a beetle species...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entity_id: str = Field(description='Stable id "<category>/<nn>", unique across the domain.')
    category: str = Field(description="Category the entity belongs to; composites never mix categories.")
    name: str = Field(description="Proper name used in questions, e.g. 'Aster Mk-II glider'.")
    split: Split = Field(description="'seen' if the category is used for training, else 'unseen'.")
    knowledge_card: str = Field(description="1-3 sentences naming the features that identify the entity.")
    attributes: dict[str, str | int] = Field(
        default_factory=dict, description="Structured attribute values the card and the renderer share."
    )


def entities_to_table(entities: list[Entity]) -> pa.Table:
    """Entities -> Arrow table (``attributes`` as sorted-key JSON, so bytes are deterministic).

    >>> e = Entity(entity_id="fish/00", category="fish", name="Orrin S fish", split="seen",
    ...            knowledge_card="c", attributes={"bands": 2})
    >>> entities_to_table([e]).column("attributes").to_pylist()
    ['{"bands": 2}']
    """
    rows = {name: [] for name in ENTITY_SCHEMA.names}
    for e in entities:
        rows["entity_id"].append(e.entity_id)
        rows["category"].append(e.category)
        rows["name"].append(e.name)
        rows["split"].append(e.split)
        rows["knowledge_card"].append(e.knowledge_card)
        rows["attributes"].append(json.dumps(e.attributes, sort_keys=True))
    return pa.Table.from_pydict(rows, schema=ENTITY_SCHEMA)


def entities_from_table(table: pa.Table, *, artifact: str | None = None) -> list[Entity]:
    """Arrow table -> entities, naming the row and field of anything malformed."""
    require_columns(table, ENTITY_SCHEMA.names, stage="entities", artifact=artifact)
    out: list[Entity] = []
    for i, row in enumerate(table.select(ENTITY_SCHEMA.names).to_pylist()):
        for key in ENTITY_SCHEMA.names:
            if row[key] is None:
                raise InputDataError("value is null", stage="entities", artifact=artifact, row=i, field=key)
        try:
            attributes = json.loads(row["attributes"])
        except json.JSONDecodeError as exc:
            raise InputDataError(
                f"attributes is not valid JSON ({exc})", stage="entities", artifact=artifact, row=i, field="attributes"
            ) from None
        if not isinstance(attributes, dict):
            raise InputDataError(
                "attributes must be a JSON object", stage="entities", artifact=artifact, row=i, field="attributes"
            )
        try:
            out.append(Entity(**{**row, "attributes": attributes}))
        except ValueError as exc:
            bad = _first_error_field(exc)
            raise InputDataError(
                f"invalid entity: {exc}", stage="entities", artifact=artifact, row=i, field=bad
            ) from None
    return out


def _first_error_field(exc: Exception) -> str | None:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        errs = errors()
        if errs and errs[0].get("loc"):
            return str(errs[0]["loc"][0])
    return None
