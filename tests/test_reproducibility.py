"""Two toy-sized runs with the same seeds, thread count and deterministic algorithms give
bit-identical SFT weights and identical greedy answers (``deepperception.determinism``)."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dp-hf-home-"))

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from deepperception.model.synthetic import cached_tiny_checkpoint
    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp())


def _weights(ckpt_dir):
    from safetensors.torch import load_file
    return load_file(str(ckpt_dir / "model.safetensors"))


def _sft_then_answer(tiny_ckpt, out, threads: int):
    from deepperception.config import load_profile
    from deepperception.determinism import apply_determinism
    from deepperception.eval.inference import run_inference
    from deepperception.eval.io import read_outputs
    from deepperception.model.synthetic import synthetic_bench, synthetic_sft_rows
    from deepperception.training.sft import train_sft

    applied = apply_determinism(threads)
    cfg = load_profile("toy", {"sft": {"max_steps": 3, "per_device_train_batch_size": 4}}).sft
    result = train_sft(synthetic_sft_rows(8), tiny_ckpt, out / "ckpt", cfg)
    outputs = read_outputs(run_inference(synthetic_bench(4), out / "ckpt", out / "eval", batch_size=4,
                                         max_new_tokens=12))
    return applied, result, _weights(out / "ckpt"), outputs


def test_two_runs_give_identical_weights_metrics_and_answers(tiny_ckpt, tmp_path):
    import torch

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    try:
        applied, ra, wa, oa = _sft_then_answer(tiny_ckpt, tmp_path / "a", threads=2)
        _, rb, wb, ob = _sft_then_answer(tiny_ckpt, tmp_path / "b", threads=2)
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
    assert applied["threads"] == 2 and applied["deterministic_algorithms"] is True
    assert wa.keys() == wb.keys()
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differing, f"weights differ between two identical runs: {differing[:5]}"
    # the training trajectory is the same too (first and last logged loss, exactly)
    for key in ("train_loss_first", "train_loss_last"):
        assert ra.metrics[key] == rb.metrics[key], key
    assert oa == ob and len(oa) == 4
    # and training actually changed the weights (a run that trains nothing would also "reproduce")
    base = _weights(tiny_ckpt)
    assert any(not torch.equal(base[k], wa[k]) for k in base if k in wa)
