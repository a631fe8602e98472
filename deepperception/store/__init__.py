"""Versioned Parquet artifacts on a local directory or S3-compatible object storage."""

from deepperception.store.artifacts import ArtifactStore, FileEntry, Manifest, VersionWriter
from deepperception.store.refs import ArtifactRef
from deepperception.store.settings import StoreSettings

__all__ = ["ArtifactRef", "ArtifactStore", "FileEntry", "Manifest", "StoreSettings", "VersionWriter"]
