"""Artifact references and the only rules for names, versions and file paths inside the store.

Names and versions become path segments (and S3 key segments), so they are restricted to plain
identifiers: a reference can never climb out of the store root (``../outside``), hide among the
store's own bookkeeping (``_store.json``, ``_attempts``, ``_quarantine``: everything starting with
``_`` or ``.``) or carry characters that mean different things on different filesystems.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, field_validator

from deepperception.errors import InvalidRefError

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LATEST = "latest"


def check_segment(text: Any, what: str) -> str:
    """``text`` if it is a valid artifact name/version, else :class:`InvalidRefError` naming it.

    >>> check_segment("sft-checkpoint", "artifact name")
    'sft-checkpoint'
    >>> check_segment("../outside", "artifact name")
    Traceback (most recent call last):
    ...
    deepperception.errors.InvalidRefError: artifact name '../outside' is not a plain identifier ...
    """
    if not isinstance(text, str) or not _SEGMENT.fullmatch(text) or ".." in text:
        raise InvalidRefError(
            f"{what} {text!r} is not a plain identifier (letters, digits, '.', '_', '-'; "
            f"starting with a letter or digit; at most 128 characters; no '..' or '/')"
        )
    return text


def check_relpath(rel: Any, what: str = "file path") -> str:
    """A file path inside a version: relative, ``/``-separated, no ``..``/``.``/empty segments.

    >>> check_relpath("files/sub/w.bin")
    'files/sub/w.bin'
    >>> check_relpath("files/../../x")
    Traceback (most recent call last):
    ...
    deepperception.errors.InvalidRefError: file path 'files/../../x' ...
    """
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise InvalidRefError(f"{what} {rel!r} must be a relative path without '.', '..' or empty segments")
    return rel


class ArtifactRef(BaseModel):
    """What tasks pass around: a name and a version, never the data itself.

    Both parts are validated on construction (:class:`InvalidRefError` names the bad text).
    The version may be the literal ``latest``; :meth:`ArtifactStore.resolve` turns it into the
    newest committed version.
    """

    model_config = {"frozen": True}

    name: str
    version: str

    def __init__(self, **data: Any) -> None:
        # Checked here as well as in the field validators so that callers get InvalidRefError
        # itself (pydantic would wrap a validator's error in a ValidationError).
        check_segment(data.get("name"), "artifact name")
        check_segment(data.get("version"), f"version of artifact {data.get('name')!r}")
        super().__init__(**data)

    @field_validator("name", "version")
    @classmethod
    def _plain(cls, v: str) -> str:
        return check_segment(v, "artifact name or version")

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def is_latest(self) -> bool:
        return self.version == LATEST

    @classmethod
    def parse(cls, text: str) -> "ArtifactRef":
        """``name@version`` -> ref.

        >>> ArtifactRef.parse("entities@abc123")
        ArtifactRef(name='entities', version='abc123')
        >>> ArtifactRef.parse("bench@latest").is_latest
        True
        >>> ArtifactRef.parse("../outside@v1")
        Traceback (most recent call last):
        ...
        deepperception.errors.InvalidRefError: artifact name '../outside' is not a plain identifier ...
        >>> ArtifactRef.parse("entities")
        Traceback (most recent call last):
        ...
        deepperception.errors.InvalidRefError: artifact reference 'entities' is not of the form name@version
        """
        name, sep, version = text.partition("@")
        if not sep or not name or not version:
            raise InvalidRefError(f"artifact reference {text!r} is not of the form name@version")
        return cls(name=name, version=version)
