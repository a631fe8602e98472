"""Offline, home-directory-clean environment and the shared tiny checkpoint."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dp-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Session-wide tiny Qwen2-VL checkpoint (built once per pytest run, shared by directories)."""
    from deepperception.model.synthetic import cached_tiny_checkpoint
    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp())
