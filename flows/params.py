"""What the deployment forms take, and the checks that refuse a bad parameter before any work.

The Prefect UI builds each deployment's run form from its flow's signature and docstring
(``prefect.utilities.callables.parameter_schema``: types give the widgets, a Google-style
``Args:`` section gives each field's description). So this module holds:

* :data:`ProfileName` -- a ``Literal`` of the profile files shipped in ``deepperception/profiles``
  (read at import, so a new profile file is a new dropdown entry); :data:`Dispatch`;
* :data:`RefParam` -- an artifact reference as the string ``artifacts ls`` prints (``name@version``
  or ``name@latest``; an ``ArtifactRef`` or its ``{"name", "version"}`` mapping is accepted too);
* :func:`resolve_refs` -- every reference parameter resolved and checked to exist, failing with
  the parameter's name; :func:`resolve_dispatch` -- ``auto`` made concrete;
* :func:`described` -- the ``Args:`` section from shared descriptions (one wording per parameter
  name across all flows) plus a flow's own;
* :func:`stage_run_name` -- ``flow_run_name`` callables: ``evaluate-checkpoint[sft]``,
  ``train-grpo[cfg 7534ab12]``.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, PlainSerializer, PlainValidator, TypeAdapter, WithJsonSchema

from deepperception.config import shipped_profiles
from deepperception.errors import ArtifactError, ConfigError
from deepperception.store import ArtifactRef

ProfileName = Literal[tuple(shipped_profiles())]  # type: ignore[valid-type]
"""A shipped profile name: the full-reproduction form's dropdown."""

Dispatch = Literal["auto", "inline", "deployments"]

GPU_POOL = "gpu"


class ParameterError(ConfigError, ArtifactError):
    """A flow parameter that cannot work, refused before the flow does anything (names the parameter).
    Also an :class:`ArtifactError`: most are references to artifacts the store does not have."""


def _to_ref(value: Any) -> ArtifactRef:
    if isinstance(value, ArtifactRef):
        return value
    if isinstance(value, str):
        return ArtifactRef.parse(value.strip())
    if isinstance(value, dict):
        return ArtifactRef(**value)
    raise ValueError(f"expected an artifact reference 'name@version' or 'name@latest', got {value!r}")


_REF_SCHEMA = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9._-]*$",
               "examples": ["sft-checkpoint@latest"]}

RefParam = Annotated[ArtifactRef, PlainValidator(_to_ref), PlainSerializer(str, return_type=str),
                     WithJsonSchema(_REF_SCHEMA)]
"""An artifact reference parameter: ``"name@version"`` / ``"name@latest"`` in the form and the API."""


def ref_text(value: Any) -> Any:
    """References (also inside lists and mappings) as ``name@version`` strings, what a deployment's
    schema takes; anything else unchanged.

    >>> ref_text({"bench": ArtifactRef(name="bench", version="v1"), "n": 2})
    {'bench': 'bench@v1', 'n': 2}
    """
    if isinstance(value, ArtifactRef):
        return str(value)
    if isinstance(value, dict):
        return {k: ref_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [ref_text(v) for v in value]
    return value


def resolve_refs(store_uri: str | None, **refs: Any) -> dict[str, Any]:
    """Each ``param=reference`` resolved against the store (``latest`` -> the newest committed
    version) and checked to exist; ``None`` stays ``None``; a mapping of references is resolved
    entry by entry. Raises :class:`ParameterError` naming the parameter (and entry)."""
    from tasks.common import open_store, resolve_ref

    store = open_store(store_uri)

    def one(param: str, value: Any) -> ArtifactRef:
        try:
            return resolve_ref(store, str(_to_ref(value)))
        except (ArtifactError, ValueError) as exc:  # not name@version, or not committed in this store
            raise ParameterError(f"parameter {param!r}: {exc}") from exc

    out: dict[str, Any] = {}
    for param, value in refs.items():
        if value is None:
            out[param] = None
        elif isinstance(value, dict) and not {"name", "version"} <= set(value):
            out[param] = {k: one(f"{param}[{k!r}]", v) for k, v in value.items()}
        else:
            out[param] = one(param, value)
    return out


def gpu_deployments_available(deployments: typing.Iterable[str]) -> bool:
    """Whether the API has a ``gpu`` work pool and every named deployment (``flow/deployment``)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(GPU_POOL)
        except ObjectNotFound:
            return False
        for name in deployments:
            try:
                client.read_deployment_by_name(name)
            except ObjectNotFound:
                return False
    return True


def resolve_dispatch(dispatch: str, deployments: typing.Iterable[str]) -> Literal["inline", "deployments"]:
    """``auto`` -> ``deployments`` when the API has a ``gpu`` work pool serving the GPU stages'
    deployments (the ``make up`` stack), else ``inline`` (this process); others unchanged."""
    if dispatch != "auto":
        return dispatch  # type: ignore[return-value]
    return "deployments" if gpu_deployments_available(deployments) else "inline"


# One wording per parameter name, shared by every flow that takes it.
COMMON_DOCS = {
    "store_uri": "Artifact store: a local directory or s3://bucket/prefix. Empty: the worker's DP_STORE_URI "
                 "(default .dp-store).",
    "force": "Recompute this stage even if its version is committed (a new version; what depends on it changes).",
    "sharding": "How the stage splits its work into shards (empty: the defaults).",
    "runner": "How the stage's shards are executed, one Prefect task run per shard (empty: the defaults).",
    "launch": "How the training processes are started on the worker (empty: the defaults).",
    "knowledge": "Knowledge cards for real entities, from an LLM endpoint (empty: the defaults).",
}


def described(**docs: str) -> Callable[[Callable], Callable]:
    """Decorator (below ``@flow``) appending a Google-style ``Args:`` section to the function's
    docstring: ``docs`` first, then :data:`COMMON_DOCS` for the other parameters it has.
    A parameter without a description raises here, at import."""
    import inspect

    def wrap(fn: Callable) -> Callable:
        params = list(inspect.signature(fn).parameters)
        missing = [p for p in params if p not in docs and p not in COMMON_DOCS]
        if missing:
            raise TypeError(f"{fn.__name__}: no description for parameter(s) {missing}")
        lines = [f"    {p}: {docs.get(p) or COMMON_DOCS[p]}" for p in params]
        head = inspect.cleandoc(fn.__doc__ or fn.__name__)
        fn.__doc__ = head + "\n\nArgs:\n" + "\n".join(lines) + "\n"
        return fn

    return wrap


def _validated(fn: Callable, name: str, value: Any) -> Any:
    hint = typing.get_type_hints(fn, include_extras=True).get(name, Any)
    return TypeAdapter(hint).validate_python(value)


def stage_run_name(flow_name: str, *, label: str | None = None, config: str | None = "config",
                   extra: Callable[[dict], str | None] | None = None) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``flow_name[<label param>]`` when ``label`` names a parameter,
    else ``flow_name[cfg <first 8 of the config parameter's hash>]`` (the manifest's ``config_hash``
    of the version when the stage hashes its config as given; training stages do), with ``extra``'s
    text in front. Never fails a run: a problem names the run by ``flow_name`` alone."""

    def name() -> str:
        from prefect.context import FlowRunContext

        from deepperception.version import config_hash

        ctx = FlowRunContext.get()
        try:
            params = dict(ctx.parameters or {}) if ctx else {}
            parts = []
            if extra is not None and (text := extra(params)):
                parts.append(text)
            if label and params.get(label):
                parts.append(str(params[label]))
            elif config and params.get(config) is not None:
                cfg = params[config]
                if not isinstance(cfg, BaseModel):
                    cfg = _validated(ctx.flow.fn, config, cfg)
                parts.append(f"cfg {config_hash(cfg)[:8]}")
            return f"{flow_name}[{' '.join(parts)}]" if parts else flow_name
        except Exception:  # noqa: BLE001 - a name is never worth a failed run
            return flow_name

    name.__qualname__ = name.__name__ = f"{flow_name.replace('-', '_')}_run_name"
    return name
