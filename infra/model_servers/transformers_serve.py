"""Launch ``transformers serve`` (an OpenAI-compatible chat-completions server) for a Qwen2-VL /
Qwen2.5-VL checkpoint, also in a venv without torchvision.

Why a launcher: the stock ``transformers serve`` loads processors with plain
``AutoProcessor.from_pretrained``, and ``Qwen2VLProcessor`` requires torchvision for its video
processor, so without torchvision every chat request answers 500. The data engine only sends
images, so when torchvision is missing this replaces the Qwen-VL processor classes with their
image-only subclass (``deepperception.model.loading.image_only_processor_class``, which keeps the
class name) before handing over to the stock CLI. Everything else is ``transformers serve``.

Usage (all arguments after the script name go to ``transformers serve``)::

    python infra/model_servers/transformers_serve.py CKPT_DIR --host 127.0.0.1 --port 8011 --device cpu

``CKPT_DIR`` is preloaded and is the ``model`` name clients must send. See README.md here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def patch_qwen_vl_processors() -> list[str]:
    """Swap in image-only Qwen-VL processors when torchvision is missing; names of patched classes."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return []
    from deepperception.model.loading import image_only_processor_class
    import transformers.models.qwen2_5_vl as q25
    import transformers.models.qwen2_vl as q2

    patched = []
    for module, name in ((q2, "Qwen2VLProcessor"), (q25, "Qwen2_5_VLProcessor")):
        base = getattr(module, name)
        setattr(module, name, image_only_processor_class(base))
        patched.append(name)
    return patched


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    # `GET /v1/models` answers 500 unless the hub cache directory exists.
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    (hf_home / "hub").mkdir(parents=True, exist_ok=True)
    patch_qwen_vl_processors()
    from transformers.cli.transformers import app

    app(["serve", *args], prog_name="transformers")


if __name__ == "__main__":
    main()
