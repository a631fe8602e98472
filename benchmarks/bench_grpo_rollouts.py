"""GRPO step time: TRL's batched rollouts vs the official fork's loop of G single-sample ``generate`` calls.

Run:  nice -n 5 .venv/bin/python benchmarks/bench_grpo_rollouts.py [--steps 3] [--repeats 2] [--max-completion-length 420] [--threads 1]

Both sides run our real GRPO stage (:func:`deepperception.training.grpo.train_grpo`, TRL's
``GRPOTrainer``) on the same tiny Qwen2-VL (built with ``build_tiny_qwen2vl`` at the ``demo``
profile's base-model sizes), the same rows and the ``demo`` profile's GRPO settings (2 prompts x
G=4 completions per step, 420 new tokens); only the rollout generation differs:

* ``trl``: TRL 1.16's regular path, one left-padded ``generate`` call for every completion of the
  step (the G copies of each prompt in one batch).
* ``fork loop``: the rollout of ``MaxyLee/R1-V`` @ ``a84b874`` ``Qwen2VLGRPOTrainer`` (the official
  DeepPerception GRPO, official-code.md §4.4), transcribed here as a benchmark reference (not in
  the library): per prompt, ``num_generations`` separate ``generate`` calls on a deep copy of the
  generation config with ``num_return_sequences=1`` (the fork runs 1 prompt per device, so each
  call generates one sequence), the G results right-padded with the pad id to the longest and
  stacked, then the completion mask up to and including the first EOS. It reuses TRL's generation
  config (same temperature / top_k / EOS / suppressed image token), so only batching differs.

Everything after generation (rewards, reference and policy log-probs, loss, optimizer) is TRL's in
both. Runs alternate (trl, fork, trl, fork, ...) so machine load hits both alike; each timed run
follows a one-step warm-up of each side, and the median of the runs is reported with the rollout
share of the step. The random-init model rarely emits EOS, so both sides generate about the full
budget (the mean completion length is printed as a check that they did the same work).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _per_prompt_fields(fields: dict, n_prompts: int) -> list[dict]:
    """Split TRL's batched multimodal fields (``pixel_values`` flattened over the patches of every
    image, ``image_grid_thw`` one row per image, per-token lists one entry per prompt) into one
    dict per prompt. Every GRPO prompt here holds exactly one image."""
    import numpy as np
    import torch

    grid = fields.get("image_grid_thw")
    grid = None if grid is None else torch.as_tensor(np.asarray(grid) if not isinstance(grid, torch.Tensor) else grid)
    if grid is not None and grid.shape[0] != n_prompts:
        raise ValueError(f"expected one image per prompt, got {grid.shape[0]} images for {n_prompts} prompts")
    patches = [0] + (grid.prod(dim=1).cumsum(0).tolist() if grid is not None else [])
    out: list[dict] = [{} for _ in range(n_prompts)]
    for k, v in fields.items():
        for i in range(n_prompts):
            if k == "image_grid_thw":
                out[i][k] = grid[i:i + 1]
            elif k in ("pixel_values", "pixel_values_videos"):
                t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
                out[i][k] = t[patches[i]:patches[i + 1]]
            elif isinstance(v, list) and len(v) == n_prompts:  # per-token field (e.g. mm_token_type_ids)
                out[i][k] = torch.tensor([v[i]])
            else:
                raise ValueError(f"cannot split multimodal field {k!r} per prompt")
    return out


def fork_generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
    """Drop-in for ``GRPOTrainer._generate_single_turn`` (regular transformers path) with the
    fork's rollout loop: G single-sample ``generate`` calls per prompt, right-padded and stacked."""
    import torch
    import torch.nn.functional as F
    from transformers import Trainer
    from trl.models import unwrap_model_for_generation

    g = num_generations
    if len(prompt_ids) % g:
        raise ValueError(f"{len(prompt_ids)} prompts is not a multiple of num_generations {g}")
    fields = _per_prompt_fields(multimodal_fields, len(prompt_ids))
    pad_id = self._tokenizer.pad_token_id
    eos = torch.tensor(self.eos_token_ids)
    temp_generation_config = copy.deepcopy(self.generation_config)
    temp_generation_config.num_return_sequences = 1
    completion_ids: list[list[int]] = []
    with (
        unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                    gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                    generation_kwargs=self.generation_kwargs,
                                    gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs) as model,
        torch.no_grad(),
    ):
        for start in range(0, len(prompt_ids), g):
            group = prompt_ids[start:start + g]
            if any(list(p) != list(group[0]) for p in group):  # TRL's sampler repeats each prompt G times
                raise ValueError("the G copies of a prompt are not consecutive")
            ids = torch.tensor([list(group[0])])
            inputs = Trainer._prepare_inputs(self, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                                    **fields[start]})
            # The fork: `for i in range(num_generations): completion = unwrapped_model.generate(...)`
            all_completions = [model.generate(**inputs, generation_config=temp_generation_config) for _ in range(g)]
            max_length = max(c.size(1) for c in all_completions)
            prompt_completion_ids = torch.cat(
                [F.pad(c, (0, max_length - c.size(1)), value=pad_id) for c in all_completions], dim=0)
            completions = prompt_completion_ids[:, ids.size(1):].cpu()
            is_eos = torch.isin(completions, eos)
            eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long)
            eos_idx[is_eos.any(dim=1)] = is_eos.int().argmax(dim=1)[is_eos.any(dim=1)]
            mask = torch.arange(is_eos.size(1)).expand(is_eos.size(0), -1) <= eos_idx.unsqueeze(1)
            completion_ids += [c[m].tolist() for c, m in zip(completions, mask)]
    return completion_ids, None


class RolloutClock:
    """Wraps ``GRPOTrainer._generate_single_turn`` (TRL's or the fork loop) and sums its wall time."""

    def __init__(self, impl):
        self.impl, self.seconds, self.calls = impl, 0.0, 0

    def __call__(self, trainer, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.impl(trainer, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1


@contextlib.contextmanager
def rollouts(kind: str):
    """Patch the trainer's rollout for one run; yields the clock."""
    from trl import GRPOTrainer

    original = GRPOTrainer._generate_single_turn
    clock = RolloutClock(original if kind == "trl" else fork_generate_single_turn)
    GRPOTrainer._generate_single_turn = lambda self, *a, **kw: clock(self, *a, **kw)
    try:
        yield clock
    finally:
        GRPOTrainer._generate_single_turn = original


def run(kind: str, rows, ckpt: Path, cfg, tmp: Path, tag: str) -> dict:
    from deepperception.training.grpo import train_grpo

    out = tmp / f"{kind.replace(' ', '-')}-{tag}"
    with rollouts(kind) as clock:
        res = train_grpo(rows, ckpt, out, cfg, work_dir=out / "_work")
    steps = res.metrics["steps"]
    lengths = res.metrics.get("completion_mean_length") or [float("nan")]
    return {"s_per_step": res.metrics["runtime_s"] / steps, "rollout_s_per_step": clock.seconds / steps,
            "steps": steps, "completion_mean_length": statistics.fmean(lengths)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="GRPO steps per timed run")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per side (alternating); median reported")
    ap.add_argument("--max-completion-length", type=int, default=None, help="default: the demo profile's")
    ap.add_argument("--profile", default="demo", help="profile whose base-model sizes and GRPO settings are used")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared, loaded machine more "
                    "threads than free cores make every op many times slower through OpenMP spin-waiting)")
    ap.add_argument("--json", action="store_true", help="also print the raw runs as JSON")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)

    from deepperception.config import load_profile
    from deepperception.model.synthetic import synthetic_grpo_rows, tiny_corpus
    from deepperception.model.tiny import build_tiny_qwen2vl

    prof = load_profile(a.profile)
    b = prof.base_model
    tmp = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    ckpt = build_tiny_qwen2vl(tmp / "tiny", tiny_corpus(), vocab_size=b.vocab_size, hidden=b.hidden, layers=b.layers,
                              image_min_pixels=b.image_min_pixels, image_max_pixels=b.image_max_pixels, seed=b.seed)
    over = {"max_steps": a.steps, "save_steps": 10**6, "logging_steps": 1}
    if a.max_completion_length:
        over["max_completion_length"] = a.max_completion_length
    cfg = prof.grpo.model_copy(update=over)
    prompts_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps // cfg.num_generations
    rows = synthetic_grpo_rows(prompts_per_step * a.steps)
    warm = cfg.model_copy(update={"max_steps": 1, "max_completion_length": 8})
    for kind in ("trl", "fork loop"):
        run(kind, rows, ckpt, warm, tmp, "warm")
    runs: dict[str, list[dict]] = {"trl": [], "fork loop": []}
    for r in range(a.repeats):
        for kind in ("trl", "fork loop"):
            runs[kind].append(run(kind, rows, ckpt, cfg, tmp, str(r)))
            print(f"[{kind} run {r}] {runs[kind][-1]}", file=sys.stderr, flush=True)

    med = {k: {m: statistics.median(x[m] for x in v) for m in ("s_per_step", "rollout_s_per_step",
                                                                  "completion_mean_length")} for k, v in runs.items()}
    speed = med["fork loop"]["s_per_step"] / med["trl"]["s_per_step"]
    roll = med["fork loop"]["rollout_s_per_step"] / med["trl"]["rollout_s_per_step"]
    cmd = "python benchmarks/bench_grpo_rollouts.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# GRPO step time, TRL batched rollouts vs the fork's G generate calls per prompt "
          f"({platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs)")
    print(f"command: `{cmd.strip()}`")
    print(f"model: tiny Qwen2-VL ({a.profile} base model: hidden {b.hidden}, layers {b.layers}, vocab {b.vocab_size}); "
          f"{prompts_per_step} prompts x G={cfg.num_generations} per step, max_completion_length "
          f"{cfg.max_completion_length}, temperature {cfg.temperature}, top_k {cfg.top_k}, beta {cfg.beta}; "
          f"{a.steps} steps x {a.repeats} runs per side, median")
    print()
    print("| rollouts | s / step | rollout s / step | rollout share | mean completion tokens | step speedup | target |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("fork loop", "trl"):
        m = med[kind]
        sp = f"**{speed:.2f}x** (rollouts {roll:.2f}x)" if kind == "trl" else "1.00x"
        tgt = (">= 2x " + ("met" if speed >= 2 else "MISSED")) if kind == "trl" else ""
        print(f"| {kind} | {m['s_per_step']:.2f} | {m['rollout_s_per_step']:.2f} | "
              f"{100 * m['rollout_s_per_step'] / m['s_per_step']:.0f}% | {m['completion_mean_length']:.0f} | {sp} | {tgt} |")
    if a.json:
        print(json.dumps({"runs": runs, "median": med, "speedup": speed, "rollout_speedup": roll}))


if __name__ == "__main__":
    main()
