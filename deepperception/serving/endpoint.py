"""Where a model server is and how hard to push it.

A superset of the engine's original ``EndpointConfig`` (same field names and defaults), plus the
knobs a long run against a shared server needs: a client-side request rate, the backoff curve of
retries, and prices so a run's manifest can state what it cost. The API key itself is never part
of a config (it would end up in manifests): only the name of the environment variable holding it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EndpointConfig(BaseModel):
    """An OpenAI-compatible chat-completions endpoint (vLLM, ``transformers serve``, SGLang, a hosted API).

    >>> EndpointConfig(model="m").concurrency
    8
    >>> try:
    ...     EndpointConfig(backoff_base_s=5, backoff_max_s=1)
    ... except ValueError as exc:
    ...     print(exc.errors()[0]["msg"])
    Value error, backoff_max_s (1.0) must be >= backoff_base_s (5.0)
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field("http://127.0.0.1:8000/v1", description="Base URL including /v1.")
    model: str = Field("Qwen2-VL-72B-Instruct", description="Model name the server expects.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds one HTTP attempt may take (connect + generate) before it counts as a timeout.")
    max_retries: int = Field(3, ge=0, description="Retries per item after the first attempt (429, 5xx, timeouts, connection errors, malformed bodies).")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    rate_limit_rps: float | None = Field(
        None, gt=0, description="Client-side cap on HTTP attempts per second (retries included); None = unlimited.")
    backoff_base_s: float = Field(
        0.5, ge=0, description="Backoff before retry n is uniform in [0, min(backoff_max_s, backoff_base_s * 2**n)] (full jitter).")
    backoff_max_s: float = Field(
        30.0, ge=0, description="Upper bound of one backoff sleep, also of an honoured Retry-After.")
    max_response_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest reply body read from the server; a longer one is cut off and "
        "the attempt fails with reason 'oversized_reply' (not retried: the same request gets the same answer).")
    price_per_1k_prompt_tokens: float = Field(
        0.0, ge=0, description="Cost of 1000 prompt tokens in your currency, for the run's cost accounting.")
    price_per_1k_completion_tokens: float = Field(
        0.0, ge=0, description="Cost of 1000 completion tokens in your currency, for the run's cost accounting.")

    @model_validator(mode="after")
    def _backoff_order(self) -> "EndpointConfig":
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) must be >= backoff_base_s ({self.backoff_base_s})")
        return self
