"""What every thin task shares: opening the store and turning references into local paths."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from deepperception.errors import ArtifactError, InputDataError
from deepperception.store import ArtifactRef, ArtifactStore
import tasks.events  # noqa: F401,E402 - registers the commit listener (a Prefect event per committed version)
import tasks.progress  # noqa: F401,E402 - installs the Prefect progress sink (progress artifacts of long stages)

# Reuse is decided by our own deterministic artifact versions (inputs + config + code), which
# survive across flow runs and machines; Prefect's result cache would only duplicate that.
TASK_DEFAULTS = dict(cache_policy=NO_CACHE, persist_result=False)

LIBRARY_LOGGER = "deepperception"


class RunLogForwarder(logging.Handler):
    """Sends the library's log records (``deepperception.*``: "stage sft: reusing sft-checkpoint@...")
    to the Prefect run they happen in, so the UI's run log says what was reused or waited for.

    The equivalent of ``PREFECT_LOGGING_EXTRA_LOGGERS=deepperception`` without depending on each
    worker's or the CLI's environment, and silent outside a run (Prefect's own handler warns for
    every record without a run, e.g. from ``deepperception artifacts ls``). Records from threads
    that do not carry the run context are not forwarded."""

    def __init__(self) -> None:
        super().__init__()
        from prefect.logging.handlers import APILogHandler

        self._api = APILogHandler()

    def emit(self, record: logging.LogRecord) -> None:
        from prefect.context import get_run_context
        from prefect.logging.handlers import APILogHandler

        try:
            get_run_context()
        except MissingContextError:
            return
        lib = logging.getLogger(LIBRARY_LOGGER)
        if any(isinstance(h, APILogHandler) for h in lib.handlers):
            return  # PREFECT_LOGGING_EXTRA_LOGGERS already includes the library: do not send twice
        self._api.handle(record)


def forward_library_logs() -> None:
    """Install :class:`RunLogForwarder` on the ``deepperception`` logger (once) and let its INFO
    records through (its level is only raised from NOTSET, never lowered or overridden)."""
    lib = logging.getLogger(LIBRARY_LOGGER)
    if not any(isinstance(h, RunLogForwarder) for h in lib.handlers):
        lib.addHandler(RunLogForwarder())
    if lib.level == logging.NOTSET:
        lib.setLevel(logging.INFO)


forward_library_logs()


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger, or a plain one when a task body runs outside a run (``task.fn``
    from a script or a test), so the same body works in both."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("tasks")


def open_store(store_uri: str | None) -> ArtifactStore:
    """The store at ``store_uri`` (endpoint/credentials from DP_STORE_* / AWS_* env), or the default."""
    return ArtifactStore.from_uri(store_uri)


def read_input_table(store: ArtifactStore, ref: ArtifactRef, consumer: str, table: str = "data") -> pa.Table:
    """Table ``table`` of the input artifact ``ref``, refusing an empty one.

    An empty table is never valid input to any stage: composing, distilling, training or
    evaluating on zero rows would only commit another empty version (and an identical rerun
    would reuse it). Failing here names both the upstream version and the consuming stage.
    """
    data = store.read_table(ref, table)
    if data.num_rows == 0:
        raise _empty_input(ref, consumer, table)
    return data


def _empty_input(ref: ArtifactRef, consumer: str, table: str) -> InputDataError:
    where = "" if table == "data" else f" (table {table!r})"
    return InputDataError(
        f"input {ref}{where} has no rows; stage {consumer!r} cannot run on an empty table. "
        f"Rerun the stage that produced {ref.name} (force it if it was committed empty)",
        stage=consumer, artifact=str(ref))


def require_input_rows(store: ArtifactStore, ref: ArtifactRef, consumer: str, table: str = "data") -> int:
    """:func:`read_input_table`'s check without reading the table: its row count from the manifest."""
    n = store.num_rows(ref, table)
    if n == 0:
        raise _empty_input(ref, consumer, table)
    return n


def checkpoint_dir(store: ArtifactStore, ref: ArtifactRef, step: int | None = None) -> Path:
    """Local directory of a checkpoint artifact: an external directory recorded by reference
    (a 7B checkpoint is not copied into the store) or the materialised files of a stored one.

    ``step``: one of the intermediate checkpoints a training stage published (its metadata's
    ``checkpoints`` list, files under ``checkpoints/step-NNNNNN/``); ``None`` is the final one."""
    manifest = store.manifest(ref)
    external = manifest.metadata.get("external_path")
    if step is not None:
        from deepperception.training.checkpoints import step_prefix

        steps = list(manifest.metadata.get("checkpoints") or [])
        if external or step not in steps:
            raise ArtifactError(f"checkpoint {ref} has no published step {step} (published steps: {steps or 'none'}; "
                                f"training stages publish every save_steps)")
        return store.materialize(ref, prefix=step_prefix(step))
    if external:
        path = Path(external)
        if not (path / "config.json").is_file():
            raise ArtifactError(f"checkpoint {ref} points at {path}, which has no config.json any more")
        return path
    return store.materialize(ref)


def register_external_checkpoint(store: ArtifactStore, path: str, name: str, stage: str,
                                 config: dict | None = None, force: bool = False) -> ArtifactRef:
    """Record a checkpoint directory by reference (path + identity of its files)."""
    from deepperception.errors import ConfigError
    from deepperception.model.loading import checkpoint_fingerprint
    from deepperception.store.stage import run_stage

    ckpt = Path(path).expanduser().resolve()
    if not (ckpt / "config.json").is_file():
        raise ConfigError(f"checkpoint {path!r}: no config.json in {ckpt}")
    identity = checkpoint_fingerprint(ckpt)

    def produce(w):
        w.write_json("external.json", {"path": str(ckpt), "sha256": identity})
        return {"external_path": str(ckpt), "identity": identity}

    # The identity hashes are part of the version: a changed checkpoint is a new version.
    cfg = {**(config or {}), "path": str(ckpt), "identity": identity}
    return run_stage(store, name, stage, cfg, {}, produce, force=force)[0]  # code scope: derived from this function


def resolve_ref(store: ArtifactStore, text: str) -> ArtifactRef:
    """``name@version`` or ``name@latest`` -> a committed reference."""
    ref = ArtifactRef.parse(text)
    if ref.version == "latest":
        latest = store.latest(ref.name)
        if latest is None:
            raise ArtifactError(f"no committed version of {ref.name!r} in store {store.uri}")
        return latest
    if not store.exists(ref):
        raise ArtifactError(f"artifact {ref} does not exist in store {store.uri}")
    return ref


def resolve_checkpoint_ref(store: ArtifactStore, text: str) -> tuple[ArtifactRef, int | None]:
    """``name@version[#step=N]`` (version may be ``latest``) -> ``(committed ref, step or None)``;
    pass both to :func:`checkpoint_dir`. The step syntax is read by
    :func:`deepperception.training.checkpoints.parse_step_ref` only."""
    from deepperception.training.checkpoints import parse_step_ref

    ref_text, step = parse_step_ref(text)
    ref = resolve_ref(store, ref_text)
    if step is not None and step not in (store.manifest(ref).metadata.get("checkpoints") or []):
        checkpoint_dir(store, ref, step)  # raises, naming the published steps
    return ref, step
