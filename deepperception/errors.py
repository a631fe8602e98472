"""Errors that name what went wrong and where: stage, artifact, row, field.

Every stage raises these for bad input so that an ML engineer reading a failed Prefect run
sees *which* file, row or field to fix, not a bare traceback from deep inside pyarrow or PIL.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class for every error this package raises on purpose."""


class InputDataError(PipelineError, ValueError):
    """Bad input data: a missing column, an unparsable value, an image that will not decode.

    >>> print(InputDataError("image does not decode", stage="compose", artifact="labeled@ab12", row=7, field="image"))
    [stage=compose artifact=labeled@ab12 row=7 field=image] image does not decode
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        artifact: str | None = None,
        row: int | str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.stage = stage
        self.artifact = artifact
        self.row = row
        self.field = field
        where = " ".join(
            f"{k}={v}"
            for k, v in (("stage", stage), ("artifact", artifact), ("row", row), ("field", field))
            if v is not None
        )
        super().__init__(f"[{where}] {message}" if where else message)


class ConfigError(PipelineError, ValueError):
    """A stage configuration that cannot work (e.g. batch size not divisible by generations)."""


class ArtifactError(PipelineError):
    """A missing, incomplete or corrupt artifact version in the store."""


class AlreadyCommittedError(ArtifactError):
    """Another run committed this exact version first (same inputs, config and code)."""


class InvalidRefError(ArtifactError, ValueError):
    """An artifact name or version that is not a plain identifier (``/``, ``..``, odd characters)."""


class StageFailedError(PipelineError):
    """A stage whose items failed past its limit (e.g. a dead endpoint): nothing was committed."""
