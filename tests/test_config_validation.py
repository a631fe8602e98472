"""Configs are validated in full before any work: each bad value is refused by `reproduce` with
the field path named, exit code 2, and nothing committed to the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepperception.config import ConfigFileError, load_config, shipped_profiles

CLI = [sys.executable, "-m", "deepperception.cli"]

# (override, text the error must contain: the field path, and what is wrong)
BAD = {
    "negative_min_pixels": ({"base_model": {"image_min_pixels": -3136}},
                            "base_model.image_min_pixels: Input should be greater than 0"),
    "zero_max_pixels": ({"base_model": {"image_max_pixels": 0}}, "base_model.image_max_pixels"),
    "min_above_max_pixels": ({"base_model": {"image_min_pixels": 20000, "image_max_pixels": 10000}},
                             "image_min_pixels (20000) must be <= image_max_pixels (10000)"),
    "negative_sft_pixels": ({"sft": {"image_max_pixels": -1}}, "sft.image_max_pixels: must be > 0"),
    "sft_limits_cross_base": ({"sft": {"image_max_pixels": 1000}},
                              "sft.image_min_pixels/image_max_pixels: effective min_pixels (3136) > max_pixels (1000)"),
    "grpo_divisibility": ({"grpo": {"per_device_train_batch_size": 3, "num_generations": 2}},
                          "must be divisible by num_generations (2)"),
    "unknown_key": ({"sft": {"lerning_rate": 1e-3}}, "sft.lerning_rate: unknown setting"),
    "unknown_section": ({"trainer": {}}, "trainer: unknown setting"),
    "fraction_out_of_range": ({"collection": {"test_fraction": 1.5}}, "collection.test_fraction"),
    "fraction_empties_a_pool": ({"collection": {"test_fraction": 0.0}}, "collection.test_fraction: must be strictly"),
    "zero_count": ({"datasets": {"bench_questions_per_composite": 0}}, "datasets.bench_questions_per_composite"),
    "zero_batch": ({"evaluation": {"batch_size": 0}}, "evaluation.batch_size"),
    "zero_max_steps": ({"sft": {"max_steps": 0}}, "sft.max_steps: must be -1"),
    "keep_range": ({"rl_filter": {"keep_min": 3, "keep_max": 1}}, "keep_min (3) <= keep_max (1)"),
    "bench_from_train_pool": ({"compose_bench": {"pool": "train"}}, "compose_bench.pool: must be 'test'"),
    "wrong_type": ({"sft": {"learning_rate": "fast"}}, "sft.learning_rate: Input should be a valid number"),
    "section_not_a_mapping": ({"sft": 3}, "sft: Input should be a valid dictionary"),
    "hidden_not_multiple_of_8": ({"base_model": {"hidden": 20}}, "hidden (20) must be a multiple of 8"),
}


def _committed(store: Path) -> list[Path]:
    return sorted(store.rglob("_manifest.json")) if store.exists() else []


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_value_is_refused_before_any_work(case, tmp_path):
    override, needle = BAD[case]
    cfg = tmp_path / "over.yaml"
    cfg.write_text(yaml.safe_dump(override))
    store = tmp_path / "store"
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # never start a server here
    env.pop("DP_DEBUG", None)
    res = subprocess.run([*CLI, "reproduce", "--profile", "toy", "--config", str(cfg), "--store", str(store)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert res.stderr.startswith("error: config file ") and "over.yaml" in res.stderr, res.stderr
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert _committed(store) == [] and not store.exists()  # validation ran before the store was touched


def test_all_field_errors_are_listed_at_once(tmp_path):
    cfg = tmp_path / "over.json"
    cfg.write_text(json.dumps({"base_model": {"image_min_pixels": -1}, "evaluation": {"batch_size": 0},
                               "sft": {"nope": 1}}))
    with pytest.raises(ConfigFileError) as e:
        load_config("toy", str(cfg))
    assert "3 invalid setting(s)" in str(e.value)
    assert sorted(f.split(":")[0] for f in e.value.fields) == ["base_model.image_min_pixels", "evaluation.batch_size",
                                                               "sft.nope"]
    assert e.value.path == str(cfg)


def test_json_parse_error_names_line_and_column(tmp_path):
    cfg = tmp_path / "over.json"
    cfg.write_text('{\n  "sft": {"max_steps": 3,}\n}\n')
    with pytest.raises(ConfigFileError, match=r"over\.json, line 2, column \d+: JSON does not parse") as e:
        load_config("toy", str(cfg))
    assert e.value.line == 2


def test_non_utf8_config_names_line(tmp_path):
    cfg = tmp_path / "over.yaml"
    cfg.write_bytes(b"sft:\n  report_to: caf\xe9\n")
    with pytest.raises(ConfigFileError, match=r"over\.yaml, line 2: not valid UTF-8") as e:
        load_config("toy", str(cfg))
    assert e.value.line == 2


def test_top_level_scalar_and_empty_file(tmp_path):
    cfg = tmp_path / "over.yaml"
    cfg.write_text("42\n")
    with pytest.raises(ConfigFileError, match="top level must be a mapping.*got a int"):
        load_config("toy", str(cfg))
    cfg.write_text("# nothing overridden\n")
    assert load_config("toy", str(cfg)) == load_config("toy")


def test_unknown_profile_is_a_config_error():
    with pytest.raises(ConfigFileError, match="unknown profile 'tiny'"):
        load_config("tiny")


def test_valid_override_still_loads(tmp_path):
    cfg = tmp_path / "over.yaml"
    cfg.write_text("sft:\n  max_steps: 3\nbase_model:\n  image_min_pixels: 1024\n")
    c = load_config("toy", str(cfg))
    assert c.sft.max_steps == 3 and c.base_model.image_min_pixels == 1024


@pytest.mark.parametrize("name", sorted(shipped_profiles()))
def test_profiles_pass_every_rule(name):
    load_config(name)
