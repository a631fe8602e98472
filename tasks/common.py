"""What every thin task shares: opening the store and turning references into local paths."""

from __future__ import annotations

from pathlib import Path

from prefect.cache_policies import NO_CACHE

from deepperception.errors import ArtifactError
from deepperception.store import ArtifactRef, ArtifactStore

# Reuse is decided by our own deterministic artifact versions (inputs + config + code), which
# survive across flow runs and machines; Prefect's result cache would only duplicate that.
TASK_DEFAULTS = dict(cache_policy=NO_CACHE, persist_result=False)


def open_store(store_uri: str | None) -> ArtifactStore:
    """The store at ``store_uri`` (endpoint/credentials from DP_STORE_* / AWS_* env), or the default."""
    return ArtifactStore.from_uri(store_uri)


def checkpoint_dir(store: ArtifactStore, ref: ArtifactRef) -> Path:
    """Local directory of a checkpoint artifact: an external directory recorded by reference
    (a 7B checkpoint is not copied into the store) or the materialised files of a stored one."""
    manifest = store.manifest(ref)
    external = manifest.metadata.get("external_path")
    if external:
        path = Path(external)
        if not (path / "config.json").is_file():
            raise ArtifactError(f"checkpoint {ref} points at {path}, which has no config.json any more")
        return path
    return store.materialize(ref)
