"""One settings object for the artifact store, from which every client is built.

pyarrow's S3 client ignores ``AWS_ENDPOINT_URL`` (apache/arrow#49643) while boto3 honours it,
so the endpoint is read once here and passed explicitly to both.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deepperception.errors import ConfigError

DEFAULT_STORE_URI = ".dp-store"
ENV_PREFIX = "DP_STORE_"
_TEMPLATE = re.compile(r"\{\{.*\}\}|\{%.*%\}", re.S)


def refuse_template(value: Any, variable: str) -> Any:
    """``value``, unless it is template text that nothing rendered (``{{ $DP_STORE_URI }}``: what a
    deployment's job env holds when the variable was unset where it was deployed); then a
    :class:`ConfigError` naming the variable, instead of a store at a path called ``{{ ... }}``.

    >>> refuse_template("s3://bucket/runs", "DP_STORE_URI")
    's3://bucket/runs'
    >>> refuse_template("{{ $DP_STORE_S3_ENDPOINT_URL }}", "DP_STORE_S3_ENDPOINT_URL")
    Traceback (most recent call last):
    ...
    deepperception.errors.ConfigError: DP_STORE_S3_ENDPOINT_URL is '{{ $DP_STORE_S3_ENDPOINT_URL }}', template text that was never rendered (an environment variable unset where the deployment was made?); set DP_STORE_S3_ENDPOINT_URL to a real value or leave it unset
    """
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(text, str) and _TEMPLATE.search(text):
        shown = "'**********'" if isinstance(value, SecretStr) else repr(text)
        raise ConfigError(f"{variable} is {shown}, template text that was never rendered (an environment variable "
                          f"unset where the deployment was made?); set {variable} to a real value or leave it unset")
    return value


class StoreSettings(BaseSettings):
    """Where artifacts live. Environment variables use the ``DP_STORE_`` prefix
    (``DP_STORE_URI=s3://bucket/prefix``, ``DP_STORE_S3_ENDPOINT_URL=http://host:port``);
    credentials fall back to the standard ``AWS_*`` variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    uri: str = Field(DEFAULT_STORE_URI, description="Local directory or s3://bucket/prefix of the store.")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (moto, SeaweedFS, MinIO, ...). Default: AWS_ENDPOINT_URL or AWS."
    )
    s3_region: str = Field("us-east-1", description="Region passed to both S3 clients.")
    s3_access_key_id: SecretStr | None = Field(None, description="Default: AWS_ACCESS_KEY_ID.")
    s3_secret_access_key: SecretStr | None = Field(None, description="Default: AWS_SECRET_ACCESS_KEY.")
    repair: bool = Field(
        False,
        description="When a stage finds its committed version corrupt: move it to _quarantine/ and recompute "
        "it (env DP_STORE_REPAIR=1; `reproduce --repair`). Off: refuse with an error naming the file.",
    )
    reuse_rehash_max_bytes: int = Field(
        64 * 1024 * 1024, ge=0,
        description="On a cache hit, committed files up to this size (tables, configs) are re-hashed; larger "
        "ones (checkpoint shards) are size-checked there and re-hashed whenever they are read or materialised.",
    )
    attempt_ttl_hours: float = Field(
        48.0, description="Uncommitted writer attempts older than this are debris of a crash and are deleted."
    )
    lease: bool = Field(
        True, description="A second run of a version being computed waits for the first instead of computing twice."
    )
    lease_ttl_s: float = Field(120.0, description="A lease not renewed for this long is taken over (its owner died).")
    lease_poll_s: float = Field(1.0, description="How often a waiting run checks the lease and the manifest.")
    s3_max_attempts: int = Field(
        3, ge=1,
        description="Attempts per S3 request (pyarrow and boto3, AWS standard retries with exponential backoff): "
        "a store restarting for a few seconds is ridden out; one that stays down fails after these attempts.",
    )
    s3_connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to wait for a TCP connection to the S3 endpoint.")
    s3_request_timeout_s: float = Field(
        60.0, gt=0, description="Seconds an S3 request may wait for the endpoint's answer before it is retried."
    )
    cache_dir: str = Field(
        "", description="Local cache for files materialised from S3 (checkpoints). Default: ~/.cache/deepperception."
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:  # an unrendered template: our one-line error, not pydantic's
            for err in exc.errors():
                if isinstance(err.get("ctx", {}).get("error"), ConfigError):
                    raise err["ctx"]["error"] from None
            raise

    @field_validator("*", mode="before")
    @classmethod
    def _no_template_text(cls, value: Any, info) -> Any:
        return refuse_template(value, f"{ENV_PREFIX}{info.field_name.upper()}")

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def bucket_and_prefix(self) -> tuple[str, str]:
        if not self.is_s3:
            raise ValueError(f"store uri {self.uri!r} is not an s3:// uri")
        rest = self.uri[len("s3://"):].strip("/")
        bucket, _, prefix = rest.partition("/")
        if len(bucket) < 3:
            raise ValueError(f"store uri {self.uri!r}: S3 bucket names need at least 3 characters")
        return bucket, prefix

    def _endpoint(self) -> str | None:
        if self.s3_endpoint_url:
            return self.s3_endpoint_url
        for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if os.environ.get(var):
                return refuse_template(os.environ[var], var)
        return None

    def _credentials(self) -> tuple[str | None, str | None]:
        key = (self.s3_access_key_id.get_secret_value() if self.s3_access_key_id
               else refuse_template(os.environ.get("AWS_ACCESS_KEY_ID"), "AWS_ACCESS_KEY_ID"))
        secret = (
            self.s3_secret_access_key.get_secret_value()
            if self.s3_secret_access_key
            else refuse_template(os.environ.get("AWS_SECRET_ACCESS_KEY"), "AWS_SECRET_ACCESS_KEY")
        )
        return key, secret

    def boto3_client(self) -> Any:
        import boto3

        key, secret = self._credentials()
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self._endpoint(),
            region_name=self.s3_region,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": self.s3_max_attempts, "mode": "standard"},
                          connect_timeout=self.s3_connect_timeout_s, read_timeout=self.s3_request_timeout_s),
        )

    def arrow_filesystem(self) -> tuple[Any, str]:
        """``(pyarrow filesystem, base path inside it)`` for the store root."""
        import pyarrow.fs as pafs

        if not self.is_s3:
            root = Path(self.uri).expanduser().resolve()
            return pafs.LocalFileSystem(), str(root)
        key, secret = self._credentials()
        kwargs: dict[str, Any] = {
            "region": self.s3_region, "access_key": key, "secret_key": secret,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=self.s3_max_attempts),
            "connect_timeout": self.s3_connect_timeout_s, "request_timeout": self.s3_request_timeout_s,
        }
        endpoint = self._endpoint()
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
        bucket, prefix = self.bucket_and_prefix
        return pafs.S3FileSystem(**kwargs), f"{bucket}/{prefix}".rstrip("/")

    def local_cache(self) -> Path:
        base = Path(self.cache_dir).expanduser() if self.cache_dir else Path.home() / ".cache" / "deepperception"
        return base
