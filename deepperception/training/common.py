"""Pieces shared by the SFT and GRPO stages."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepperception.errors import ConfigError


@dataclass
class TrainResult:
    """What a training stage hands back: where the reloadable checkpoint is, and its metrics
    (``train_loss_first``/``train_loss_last``, ``steps``, ``runtime_s``, ``s_per_step`` and, for GRPO,
    reward means)."""

    checkpoint_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checkpoint_dir"] = str(self.checkpoint_dir)
        return d


def freeze_vision(model, *, vision_tower: bool, projector: bool) -> dict[str, int]:
    """Freeze Qwen2-VL's ViT (``visual`` minus ``merger``) and/or its projector (``visual.merger``),
    as LLaMA-Factory's ``freeze_vision_tower`` / ``freeze_multi_modal_projector`` do.
    Returns trainable/total parameter counts."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        raise ConfigError(f"{type(model).__name__} has no .model.visual; not a Qwen-VL model?")
    for name, p in visual.named_parameters():
        is_proj = name.startswith("merger.")
        if (is_proj and projector) or (not is_proj and vision_tower):
            p.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable}


def loss_metrics(log_history: list[dict], key: str = "loss") -> dict[str, Any]:
    losses = [h[key] for h in log_history if key in h]
    out: dict[str, Any] = {"train_losses": losses}
    if losses:
        out.update(train_loss_first=losses[0], train_loss_last=losses[-1])
    return out


def write_stage_json(out_dir: Path, name: str, payload: dict[str, Any]) -> None:
    p = out_dir / name
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, p)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def remove_if_empty(d: Path) -> None:
    """Drop the trainer's scratch ``output_dir`` when it stayed empty (save_strategy="no")."""
    try:
        d.rmdir()
    except OSError:
        pass
