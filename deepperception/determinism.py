"""Reproducible CPU runs: one seed, deterministic kernels and a fixed thread count.

Why: a float sum is only reproducible if it is added up in the same order. PyTorch's CPU kernels
split reductions (matmuls, softmax, layer norms) over its intra-op threads, and the default thread
count is the machine's core count, so the same demo on a 2-core laptop and on a 16-core server
trains slightly different weights; over hundreds of SFT steps and greedy decoding those last-bit
differences become different answers. Fixing the thread count (the same number on every machine,
:data:`DEFAULT_THREADS`), asking PyTorch for deterministic algorithms
(``torch.use_deterministic_algorithms``, the documented switch; on CUDA it also needs
``CUBLAS_WORKSPACE_CONFIG``) and seeding every generator (``transformers.set_seed``: Python,
NumPy and torch) makes two runs on one machine bit-identical. Different CPUs (other SIMD
widths, another BLAS build) can still round differently; :mod:`benchmarks` / the results notes say
by how much that moves the demo's accuracy.

Call :func:`apply_determinism` at the start of every process-level stage that computes with torch
(SFT, GRPO, the RL filter's sampling, evaluation), before the model is built or loaded.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_THREADS = 2
"""The same on every machine (not ``os.cpu_count()``): the thread count is part of the numerics."""


class DeterminismConfig(BaseModel):
    """How a torch stage pins its numerics. Part of the stage's config (and so of its artifact
    version): a run with another thread count is a different computation."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(
        DEFAULT_THREADS, ge=1, description="torch intra-op threads (torch.set_num_threads). The default is the same "
        "on every machine so results do not depend on its core count; 1 vs 2 threads changes the demo's accuracy by "
        "a few points (float summation order).")
    deterministic_algorithms: bool = Field(
        True, description="torch.use_deterministic_algorithms(True, warn_only=True): use the deterministic kernel of "
        "every op that has one; an op without one (some CUDA backward passes) logs a warning naming it instead of "
        "failing a long GPU run.")
    seed: int | None = Field(
        None, description="Seed Python, NumPy and torch (transformers.set_seed) here; None leaves seeding to the stage "
        "(the trainers seed from their own `seed`).")


def apply_determinism(cfg: DeterminismConfig | int | None = None) -> dict[str, Any]:
    """Pin threads, deterministic kernels and (optionally) seeds for this process; returns what
    was applied, for the stage's metadata. ``cfg`` may be a thread count.

    Idempotent and cheap, so every stage calls it. ``torch.set_num_interop_threads`` can only be
    set before the first parallel op of a process; a later call keeps the existing value (it
    does not affect the order of a single op's reduction, which ``set_num_threads`` fixes).

    >>> info = apply_determinism(1)
    >>> info["threads"], info["deterministic_algorithms"]
    (1, True)
    >>> import torch; torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    (1, True)
    """
    import torch

    if cfg is None:
        cfg = DeterminismConfig()
    elif isinstance(cfg, int):
        cfg = DeterminismConfig(threads=cfg)
    torch.set_num_threads(cfg.threads)
    try:
        torch.set_num_interop_threads(cfg.threads)
    except RuntimeError:  # already set, or parallel work already started in this process
        pass
    if cfg.deterministic_algorithms:
        # cuBLAS needs a fixed workspace to be deterministic; must be set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: where an op has no deterministic kernel (some CUDA backward passes), warn and run
    # it rather than fail a long GPU run at its first step; every op that has one uses it.
    torch.use_deterministic_algorithms(cfg.deterministic_algorithms, warn_only=True)
    if cfg.seed is not None:
        from transformers import set_seed

        set_seed(cfg.seed)
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(), "seed": cfg.seed,
            "torch": torch.__version__}
