"""Tiny checkpoint building and loading (the same code paths as a real Qwen2-VL-7B directory)."""

import json
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dp-hf-home-"))

import pytest  # noqa: E402

from deepperception.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Session-wide tiny checkpoint (shared with the other directories' fixtures via the cache)."""
    from deepperception.model.synthetic import cached_tiny_checkpoint
    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp())


def test_layout_and_reload(tiny_ckpt):
    from transformers import Qwen2VLForConditionalGeneration

    from deepperception.model.loading import load_model, load_processor, read_pixel_limits

    names = {p.name for p in tiny_ckpt.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "chat_template.jinja", "processor_config.json"} <= names
    proc = load_processor(tiny_ckpt)
    assert proc.image_processor is not None
    assert type(proc).__name__ == "Qwen2VLProcessor"
    pc = json.loads((tiny_ckpt / "processor_config.json").read_text())
    assert pc["processor_class"] == "Qwen2VLProcessor"
    assert pc["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"  # torchvision venvs load it
    model = load_model(tiny_ckpt)
    assert isinstance(model, Qwen2VLForConditionalGeneration)
    assert not model.training
    assert read_pixel_limits(tiny_ckpt) == {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    # special tokens resolve to the tokenizer's own ids, and box strings round-trip
    tok = proc.tokenizer
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    s = "<|box_start|>(12,34),(56,78)<|box_end|>"
    assert tok.decode(tok(s)["input_ids"]) == s


def test_generation_config_mirrors_qwen2vl_instruct(tiny_ckpt):
    gen = json.loads((tiny_ckpt / "generation_config.json").read_text())
    assert gen["do_sample"] is True and gen["top_k"] == 1 and gen["repetition_penalty"] == 1.05
    assert gen["eos_token_id"] == [2, 0] and gen["pad_token_id"] == 0


def test_build_is_deterministic(tmp_path):
    # Build time is measured by benchmarks/bench_wallclock.py (see benchmarks/RESULTS.md), not asserted here.
    from deepperception.model.synthetic import tiny_corpus
    from deepperception.model.tiny import build_tiny_qwen2vl

    a = build_tiny_qwen2vl(tmp_path / "a", tiny_corpus(), seed=3)
    b = build_tiny_qwen2vl(tmp_path / "b", tiny_corpus(), seed=3)
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = build_tiny_qwen2vl(tmp_path / "c", tiny_corpus(), seed=4)
    assert (c / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()  # the seed matters


def test_model_class_comes_from_model_type_not_path(tiny_ckpt, tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    from deepperception.model.loading import load_model

    # The official trainer would load this as AutoModelForCausalLM: no "Qwen2-VL" in the path.
    d = tmp_path / "stage1-checkpoint"
    shutil.copytree(tiny_ckpt, d)
    assert isinstance(load_model(d), Qwen2VLForConditionalGeneration)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_type 'llama'"):
        load_model(d)


def test_pixel_limits_real_checkpoint_layout(tmp_path):
    """Qwen2-VL-7B-Instruct ships preprocessor_config.json with min/max_pixels at top level."""
    from deepperception.model.loading import read_pixel_limits

    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}))
    assert read_pixel_limits(tmp_path) == {"min_pixels": 3136, "max_pixels": 12845056}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 3136, "longest_edge": 12845056}, "max_pixels": 401408}))
    assert read_pixel_limits(tmp_path) == {"min_pixels": 3136, "max_pixels": 401408}


def test_set_pixel_limits_is_saved(tiny_ckpt, tmp_path):
    from deepperception.model.loading import load_processor, read_pixel_limits, save_processor, set_pixel_limits

    proc = set_pixel_limits(load_processor(tiny_ckpt), max_pixels=28 * 28 * 4)
    save_processor(proc, tmp_path)
    (tmp_path / "config.json").write_text((tiny_ckpt / "config.json").read_text())
    assert read_pixel_limits(tmp_path) == {"min_pixels": 3136, "max_pixels": 3136}
    assert load_processor(tmp_path).image_processor.size.longest_edge == 3136


def test_loads_a_real_qwen2vl_instruct_layout(tiny_ckpt, tmp_path):
    """Qwen2-VL-7B-Instruct's directory has preprocessor_config.json (min/max_pixels at top level),
    chat_template.json and no processor_config.json; load_processor must still give a processor."""
    from deepperception.model.loading import load_processor, read_pixel_limits

    d = tmp_path / "Qwen2-VL-7B-Instruct-like"
    d.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_ckpt / f, d / f)
    (d / "chat_template.json").write_text(json.dumps({"chat_template": (tiny_ckpt / "chat_template.jinja").read_text()}))
    (d / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}))
    proc = load_processor(d)
    assert proc.image_processor.size.longest_edge == 12845056
    assert read_pixel_limits(d) == {"min_pixels": 3136, "max_pixels": 12845056}
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}],
                                    tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>Q<|im_end|>\n<|im_start|>assistant\n")
