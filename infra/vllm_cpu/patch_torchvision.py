"""Make the CUDA build of torchvision that vllm-cpu pulls in importable beside a CPU torch.

Run with the vLLM venv's python (``infra/vllm_cpu/build.sh`` does). Without CUDA libraries its
compiled ``torchvision/_C.so`` fails to load, and ``torchvision/_meta_registrations.py`` then dies
registering fake kernels for ``torchvision::nms`` / ``qnms`` (ops that were never defined). The
pure-Python transforms, which transformers' Qwen2-VL image processor and vLLM use, need neither.
So: move ``_C.so`` aside (``_C.so.cuda-disabled``, reversible) and apply the two ``register_fake``
decorators only when ``torchvision.extension._has_ops()``.

Idempotent. Exit status 0: nothing to change; 10: changed something (printed); 1: not found.
``python patch_torchvision.py [TORCHVISION_DIR]``.
Locates torchvision with ``importlib.util.find_spec`` (no import, which would fail before the fix).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GUARDED = {
    '@torch.library.register_fake("torchvision::nms")\n':
        '@(torch.library.register_fake("torchvision::nms") if torchvision.extension._has_ops() else (lambda fn: fn))'
        '  # patched by infra/vllm_cpu\n',
    '@torch.library.register_fake("torchvision::qnms")\n':
        '@(torch.library.register_fake("torchvision::qnms") if torchvision.extension._has_ops() else (lambda fn: fn))'
        '  # patched by infra/vllm_cpu\n',
}


def torchvision_dir() -> Path | None:
    """The installed ``torchvision`` package directory, found without importing it."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def patch(pkg: Path | None = None) -> int:
    """Apply both fixes to the torchvision package directory ``pkg`` (default: the installed one)."""
    pkg = pkg or torchvision_dir()
    if pkg is None:
        print("[vllm-cpu] torchvision not installed", file=sys.stderr)
        return 1
    changed = False
    for so in sorted(pkg.glob("_C*.so")):
        so.rename(so.with_name(so.name + ".cuda-disabled"))
        print(f"[vllm-cpu] moved {so} aside (CUDA build of torchvision's ops)")
        changed = True
    if not changed:
        print("[vllm-cpu] ok: torchvision _C.so already moved aside")
    meta = pkg / "_meta_registrations.py"
    text = meta.read_text()
    new = text
    for old, guarded in GUARDED.items():
        new = new.replace(old, guarded)
    if new != text:
        meta.write_text(new)
        print(f"[vllm-cpu] guarded the nms/qnms register_fake decorators in {meta}")
        changed = True
    elif all(g in text for g in GUARDED.values()):
        print("[vllm-cpu] ok: torchvision fake-kernel registrations already guarded")
    else:
        print(f"[vllm-cpu] {meta}: expected register_fake decorators not found (torchvision changed?)",
              file=sys.stderr)
        return 1
    return 10 if changed else 0


if __name__ == "__main__":
    sys.exit(patch(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
