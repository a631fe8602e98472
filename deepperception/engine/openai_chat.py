"""One image + one text turn against any OpenAI-compatible chat-completions server
(vLLM, ``transformers serve``, SGLang, a hosted API). Shared by the grounding labeler and the
CoT teacher so both send images the same way: a base64 PNG data URL first, then the text,
exactly the order of the official ``inference.py``.
"""

from __future__ import annotations

from typing import Any

from deepperception.engine.common import ItemFailed, png_data_url


class OpenAIChat:
    """A thin, thread-safe wrapper over ``openai.OpenAI`` (the client retries 408/409/429/5xx and
    connection errors itself, with exponential backoff, ``max_retries`` times)."""

    def __init__(self, *, base_url: str, model: str, api_key: str = "EMPTY", timeout: float = 120.0, max_retries: int = 2) -> None:
        import openai  # lazy: the offline demo path never needs it

        self.model = model
        self.base_url = base_url
        self._openai = openai
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)

    def complete(self, png: bytes, text: str, **params: Any) -> str:
        """The assistant's reply text; raises ``ItemFailed`` for any API or empty-reply failure."""
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": png_data_url(png)}},
                    {"type": "text", "text": text},
                ],
            }
        ]
        try:
            resp = self._client.chat.completions.create(model=self.model, messages=messages, **params)
        except self._openai.APIStatusError as exc:
            raise ItemFailed(f"HTTP {exc.status_code} from {self.model}: {str(exc)[:300]}") from None
        except self._openai.APIError as exc:
            # Connection errors and timeouts say nothing about where they went: name the endpoint.
            raise ItemFailed(f"{type(exc).__name__} from {self.model} at {self.base_url}: {str(exc)[:300]}") from None
        if not resp.choices or not resp.choices[0].message.content:
            raise ItemFailed(f"empty reply from {self.model}")
        return resp.choices[0].message.content
