"""Pre-flight checks: each fails before step 1 with a message naming the setting or the row."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pytest

from deepperception.config import load_profile
from deepperception.errors import ConfigError, InputDataError
from deepperception.model.synthetic import synthetic_grpo_rows, synthetic_sft_rows
from deepperception.training import preflight


def _sft_cfg(**kw):
    return load_profile("toy", {"sft": kw}).sft


def _grpo_cfg(**kw):
    return load_profile("toy", {"grpo": kw}).grpo


def test_token_counts_match_the_processor(tiny_ckpt):
    """Text + image tokens computed from the resize equal what the processor really produces."""
    from deepperception.model.loading import load_processor, set_pixel_limits
    from deepperception.training.sft import _dataset

    _, qids, messages, images = _dataset(synthetic_sft_rows(3))
    for limits in ((None, None), (56 * 56, 56 * 56 * 2)):
        proc = set_pixel_limits(load_processor(tiny_ckpt), *limits)
        counts = preflight.token_counts(proc, messages, images)
        for (n_text, n_img), msgs, imgs in zip(counts, messages, images):
            text = proc.apply_chat_template(msgs, tokenize=False)
            real = proc(text=[text], images=imgs, return_tensors="pt")["input_ids"][0]
            pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            assert n_img == int((real == pad).sum()) and n_text + n_img == len(real)


def test_a_row_over_the_cutoff_fails_naming_it_instead_of_cutting_image_tokens(tiny_ckpt, tmp_path):
    from deepperception.training.sft import train_sft

    rows = synthetic_sft_rows(3)
    with pytest.raises(InputDataError, match=r"row=aircraft/0000 field=messages\] \d+ text \+ \d+ image tokens"):
        train_sft(rows, tiny_ckpt, tmp_path / "out", _sft_cfg(max_length=40))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_grpo_batch_must_hold_whole_groups_with_the_launched_world_size(tiny_ckpt, tmp_path, monkeypatch):
    from deepperception.training.grpo import train_grpo

    cfg = _grpo_cfg(per_device_train_batch_size=2, num_generations=2)  # fine for the configured world size 1
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert preflight.world_size(cfg.world_size) == 3
    preflight.check_generation_batch(2, 1, 2, 3)  # 6 completions = 3 groups of 2
    with pytest.raises(ConfigError, match=r"x processes \(3\) = 6 completions is not divisible by num_generations \(4\)"):
        preflight.check_generation_batch(2, 1, 4, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    bad = cfg.model_copy(update={"num_generations": 4})  # bypasses the config validator, as a launched run could
    with pytest.raises(ConfigError, match="not divisible by num_generations"):
        train_grpo(synthetic_grpo_rows(2), tiny_ckpt, tmp_path / "out", bad)


def test_device_and_dtype_sanity():
    assert preflight.check_device(bf16=True, use_cpu=True)["notes"] == [
        "bf16 requested on the CPU: training in float32 instead (documented downgrade)"]
    assert preflight.check_device(bf16=True, use_cpu=False, cuda_available=True, bf16_supported=True) == {
        "device": "cuda", "bf16": True, "notes": []}
    with pytest.raises(ConfigError, match="no bf16 support"):
        preflight.check_device(bf16=True, use_cpu=False, cuda_available=True, bf16_supported=False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        preflight.check_device(bf16=False, use_cpu=False, cuda_available=False)
    with pytest.raises(ConfigError, match="deepspeed.*needs CUDA"):
        preflight.check_device(bf16=False, use_cpu=False, deepspeed="infra/deepspeed/zero3.json", cuda_available=False)


def test_cuda_asked_on_a_cpu_machine_fails_before_loading(tiny_ckpt, tmp_path):
    import torch

    from deepperception.training.sft import train_sft

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="use_cpu=false but no CUDA device"):
        train_sft(synthetic_sft_rows(2), tiny_ckpt, tmp_path / "out", _sft_cfg(use_cpu=False))


def test_model_class_comes_from_config_json_not_the_path(tiny_ckpt, tmp_path):
    from deepperception.model.loading import load_model

    plain = tmp_path / "stage-1-output"  # no "Qwen2-VL" in the path (the official trainer's trap)
    shutil.copytree(tiny_ckpt, plain)
    assert preflight.check_model_class(plain) == "Qwen2VLForConditionalGeneration"
    assert type(load_model(plain)).__name__ == "Qwen2VLForConditionalGeneration"
    named = tmp_path / "Qwen2-VL-looking"
    shutil.copytree(tiny_ckpt, named)
    cfg = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ConfigError, match="model_type 'llama' is not one of"):
        preflight.check_model_class(named)
    (named / "config.json").write_text(json.dumps({**cfg, "architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(ConfigError, match="architectures"):
        preflight.check_model_class(named)


def _with(rows: pa.Table, i: int, **values) -> pa.Table:
    data = rows.to_pylist()
    data[i].update(values)
    return pa.Table.from_pylist(data, schema=rows.schema)


def test_bad_rows_fail_naming_the_row(tiny_ckpt, tmp_path):
    from deepperception.training.grpo import train_grpo
    from deepperception.training.sft import train_sft

    sft = synthetic_sft_rows(3)
    qid = sft.column("question_id")[1].as_py()
    with pytest.raises(InputDataError, match=rf"row={qid} field=images\] image is empty"):
        train_sft(_with(sft, 1, images=[b""]), tiny_ckpt, tmp_path / "a", _sft_cfg())
    with pytest.raises(InputDataError, match=rf"row={qid} field=images\] image does not decode"):
        train_sft(_with(sft, 1, images=[b"\x89PNG broken"]), tiny_ckpt, tmp_path / "a", _sft_cfg())
    msgs = json.loads(sft.column("messages")[1].as_py())
    msgs[-1]["content"][0]["text"] = "<think>hmm</think><answer>it is the left one</answer>"
    with pytest.raises(InputDataError, match=rf"row={qid} field=messages\] no \(x1,y1\),\(x2,y2\) box"):
        train_sft(_with(sft, 1, messages=json.dumps(msgs)), tiny_ckpt, tmp_path / "a", _sft_cfg())

    grpo = synthetic_grpo_rows(3)
    gid = grpo.column("question_id")[2].as_py()
    with pytest.raises(InputDataError, match=rf"row={gid} field=solution\] no \(x1,y1\),\(x2,y2\) box"):
        train_grpo(_with(grpo, 2, solution="<answer>somewhere</answer>"), tiny_ckpt, tmp_path / "b", _grpo_cfg())
    with pytest.raises(InputDataError, match=rf"row={gid} field=image\] image is empty"):
        train_grpo(_with(grpo, 2, image={"bytes": None, "path": None}), tiny_ckpt, tmp_path / "b", _grpo_cfg())
