"""Our typed stage configs -> the keyword arguments of TRL's ``SFTConfig`` / ``GRPOConfig``,
with no field-by-field copy.

Why: a copy written out by hand drops a field the day someone adds it to the stage config and
forgets the call (the field then changes the artifact's version but not the training). Here one
generic rule maps every field, and a field the rule cannot place is an error:

* **passed**: a field whose name is a field of TRL's config goes through under that name;
* **renamed**: a short table for the fields whose TRL name differs (``warmup_ratio`` ->
  ``warmup_steps``: transformers 5 takes a ratio there when the value is below 1);
* **computed**: fields of ours whose TRL value is decided when the stage runs (``bf16`` by the
  device check, ``deepspeed`` resolved to an absolute path); the caller must supply each one;
* **ours-only**: fields that configure what TRL does not see (freezing, pixel limits, rewards,
  determinism, our checkpoint publishing, which replaces TRL's ``save_*``). Declared by name,
  and they win over a same-named TRL field (``save_steps`` is ours, TRL's saving stays off).

:meth:`TRLMapping.kwargs` raises :class:`~deepperception.errors.ConfigError` for a field that is
none of these, and ``tests/training/test_trl_config_build.py`` classifies every field of both
stage configs, so a new field cannot be lost. TRL's field list comes from its dataclass
(``dataclasses.fields``), the source of truth for the installed version.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from pydantic import BaseModel

from deepperception.errors import ConfigError

Role = Literal["passed", "renamed", "computed", "ours-only"]


def trl_field_names(trl_cls: type) -> frozenset[str]:
    """The init fields of a TRL (``TrainingArguments``) dataclass.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Args:
    ...     lr: float = 1.0
    ...     seed: int = 0
    >>> sorted(trl_field_names(Args))
    ['lr', 'seed']
    """
    return frozenset(f.name for f in dataclasses.fields(trl_cls) if f.init)


@dataclass(frozen=True)
class TRLMapping:
    """How one stage config maps onto one TRL config class (see the module docstring)."""

    renames: Mapping[str, str] = field(default_factory=dict)
    computed: frozenset[str] = frozenset()
    ours_only: frozenset[str] = frozenset()

    def classify(self, cfg_cls: type[BaseModel], trl_cls: type) -> dict[str, tuple[Role, str | None]]:
        """``{our field: (role, TRL name or None)}`` for every field of ``cfg_cls``; raises
        :class:`ConfigError` naming the fields that are neither passed, renamed, computed nor
        ours-only, and table entries that name no field of ours or no field of TRL's.

        >>> from dataclasses import dataclass
        >>> from pydantic import BaseModel
        >>> @dataclass
        ... class Args:
        ...     learning_rate: float = 1.0
        ...     warmup_steps: float = 0
        >>> class Ours(BaseModel):
        ...     learning_rate: float = 0.1
        ...     warmup_ratio: float = 0.0
        ...     freeze: bool = True
        >>> TRLMapping({"warmup_ratio": "warmup_steps"}, ours_only=frozenset({"freeze"})).classify(Ours, Args)
        {'learning_rate': ('passed', 'learning_rate'), 'warmup_ratio': ('renamed', 'warmup_steps'), 'freeze': ('ours-only', None)}
        >>> TRLMapping().classify(Ours, Args)
        Traceback (most recent call last):
        ...
        deepperception.errors.ConfigError: Ours fields ['freeze', 'warmup_ratio'] are not fields of Args: pass them under a TRL name (renames), or declare them ours-only
        """
        trl = trl_field_names(trl_cls)
        ours = list(cfg_cls.model_fields)
        name = cfg_cls.__name__
        stale = sorted((set(self.renames) | self.computed | self.ours_only) - set(ours))
        if stale:
            raise ConfigError(f"the {name} -> {trl_cls.__name__} mapping names fields {name} does not have: {stale}")
        bad_targets = sorted(k for k, v in self.renames.items() if v not in trl)
        bad_targets += sorted(k for k in self.computed if k not in trl)
        if bad_targets:
            raise ConfigError(f"{name} fields {bad_targets} are mapped to names {trl_cls.__name__} does not have")
        out: dict[str, tuple[Role, str | None]] = {}
        lost = []
        for f in ours:
            if f in self.ours_only:
                out[f] = ("ours-only", None)
            elif f in self.computed:
                out[f] = ("computed", f)
            elif f in self.renames:
                out[f] = ("renamed", self.renames[f])
            elif f in trl:
                out[f] = ("passed", f)
            else:
                lost.append(f)
        if lost:
            raise ConfigError(f"{name} fields {sorted(lost)} are not fields of {trl_cls.__name__}: pass them under a "
                              "TRL name (renames), or declare them ours-only")
        return out

    def kwargs(self, cfg: BaseModel, trl_cls: type, **fixed: Any) -> dict[str, Any]:
        """Keyword arguments for ``trl_cls(**...)``: every passed/renamed field's value, then
        ``fixed`` (run-time values: ``output_dir``, the computed fields, settings the stage owns
        such as ``save_strategy="no"``). Each computed field must be in ``fixed``; a ``fixed``
        key that a passed or renamed field also sets is refused (one source for each value)."""
        roles = self.classify(type(cfg), trl_cls)
        out = {trl_name: getattr(cfg, f) for f, (role, trl_name) in roles.items()
               if role in ("passed", "renamed")}
        missing = sorted(f for f, (role, _) in roles.items() if role == "computed" and f not in fixed)
        if missing:
            raise ConfigError(f"{type(cfg).__name__} -> {trl_cls.__name__}: computed fields {missing} need a value")
        clash = sorted(set(out) & set(fixed))
        if clash:
            raise ConfigError(f"{type(cfg).__name__} -> {trl_cls.__name__}: {clash} set both by the config and by "
                              "the stage; declare them computed or drop them from the stage's fixed values")
        return {**out, **fixed}
