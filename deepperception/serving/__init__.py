"""Talking to model servers: the endpoint config and a bounded-concurrency, rate-limited,
retrying chat-completions client with per-item failure records and token/cost accounting.

Every model-served stage (grounding labels, knowledge cards, CoT distillation) goes through
:class:`~deepperception.serving.client.ChatClient`, so they all fail, retry and account the same way.
"""

from deepperception.serving.client import ChatClient, ChatRequest, ChatResult, UsageMeter, image_data_url, image_mime
from deepperception.serving.endpoint import EndpointConfig

__all__ = ["ChatClient", "ChatRequest", "ChatResult", "EndpointConfig", "UsageMeter", "image_data_url", "image_mime"]
