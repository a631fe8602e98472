"""Every shipped profile file (globbed, so a new file is covered without editing this test) loads
and validates, says why on every line, restates nothing its parent already has, and resolves its
``extends`` chain; bad files fail naming the file and the key path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deepperception.config import (
    PROFILE_META_KEYS, PROFILES_DIR, ConfigFileError, ReproductionConfig, load_profile, profile_chain,
    profile_description, shipped_profiles,
)

SHIPPED = sorted(PROFILES_DIR.glob("*.yaml"))
COMMENT = re.compile(r"\s+#\s*\S")


def _value_lines(text: str) -> dict[int, int]:
    """0-based line -> end column of the last value (scalar or flow collection) ending on it,
    for every line that carries a setting (mapping keys and meta keys are not values)."""
    out: dict[int, int] = {}

    def note(node) -> None:
        line, col = node.end_mark.line, node.end_mark.column
        if node.end_mark.column == 0 and node.end_mark.line > node.start_mark.line:
            return  # a block collection ends at the start of the next line
        out[line] = max(out.get(line, 0), col)

    def walk(node, top: bool = False) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if top and key.value in PROFILE_META_KEYS:
                    continue
                walk(value)
            if node.flow_style:
                note(node)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)
            if node.flow_style:
                note(node)
        else:
            note(node)

    root = yaml.compose(text)
    if root is not None:
        walk(root, top=True)
    return out


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _at(d: dict, path: str):
    for part in path.split("."):
        d = d[part]
    return d


def test_the_profiles_the_issue_names_are_shipped():
    assert {"toy", "demo", "paper", "paper-0.85", "ablation-direct-sft"} <= set(shipped_profiles())


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_profile_file_loads_validates_and_names_itself(path):
    cfg = load_profile(path.stem)
    assert isinstance(cfg, ReproductionConfig) and cfg.profile == path.stem
    assert ReproductionConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert profile_description(path.stem) and "\n" not in profile_description(path.stem)
    assert "description" in yaml.safe_load(path.read_text()), f"{path.name}: needs its own one-line description"
    # the file path loads the same as the name
    assert load_profile(str(path)).model_dump(exclude={"profile"}) == cfg.model_dump(exclude={"profile"})


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_setting_line_says_why(path):
    lines = path.read_text().splitlines()
    missing = [f"{path.name}:{n + 1}: {lines[n].strip()}" for n, col in sorted(_value_lines(path.read_text()).items())
               if not COMMENT.match(lines[n][col:])]
    assert not missing, "lines without a `# reason` comment:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_no_line_restates_its_parent(path):
    data = yaml.safe_load(path.read_text()) or {}
    parent = data.pop("extends", None)
    data.pop("description", None)
    base = (load_profile(parent) if parent else ReproductionConfig()).model_dump(mode="json")
    redundant = [f"{key}: {value!r}" for key, value in _leaves(data) if _at(base, key) == value]
    assert not redundant, f"{path.name} restates what {parent or 'the field defaults'} already has: {redundant}"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_extends_chain_resolves(path):
    chain = profile_chain(path.stem)
    assert chain[-1][0] == path.stem and "extends" not in chain[0][2]
    assert len({p.resolve() for _, p, _, _ in chain}) == len(chain)


def test_value_lines_sees_scalars_lists_and_flow_maps():
    text = ("description: x\na:\n  b: 1  # why\n  c: [x, y]\n  d:\n    - {e: 1}  # why\n    - f\n")
    lines = text.splitlines()
    found = {n for n, col in _value_lines(text).items() if not COMMENT.match(lines[n][col:])}
    assert found == {3, 6}  # c: [x, y] and "- f" lack a reason


def test_the_paper_family(tmp_path):
    paper, p85, ablation = (load_profile(n) for n in ("paper", "paper-0.85", "ablation-direct-sft"))
    assert paper.grpo.iou_threshold == 0.8 and p85.grpo.iou_threshold == 0.85
    assert not paper.comparison.direct_sft and ablation.comparison.direct_sft
    # the RL filter scores with GRPO's reward, so it follows the threshold; nothing else differs
    assert p85.rl_filter.reward.iou_threshold == 0.85 and paper.rl_filter.reward.iou_threshold == 0.8
    skip = {"profile", "grpo", "rl_filter"}
    assert p85.model_dump(exclude=skip) == paper.model_dump(exclude=skip)
    assert p85.rl_filter.model_dump(exclude={"reward"}) == paper.rl_filter.model_dump(exclude={"reward"})
    assert ablation.model_dump(exclude={"profile", "comparison"}) == paper.model_dump(exclude={"profile", "comparison"})


def test_user_profile_file_extends_a_shipped_one(tmp_path):
    mine = tmp_path / "my-run.yaml"
    mine.write_text("extends: paper\ngrpo:\n  beta: 0.02  # a sweep point of the run notes\n")
    cfg = load_profile(str(mine), {"sft": {"learning_rate": 1e-6}})
    assert cfg.profile == "my-run" and cfg.grpo.beta == 0.02 and cfg.sft.learning_rate == 1e-6
    assert cfg.grpo.world_size == 8  # the rest is paper's
    # a relative extends is read next to the extending file
    (tmp_path / "child.yml").write_text("extends: my-run.yaml\ngrpo: {beta: 0.06}\n")
    assert load_profile(str(tmp_path / "child.yml")).grpo.world_size == 8


def test_unknown_profile_lists_the_shipped_ones():
    with pytest.raises(ConfigFileError, match=r"unknown profile 'tiny'; shipped profiles: .*demo.*paper.*toy"):
        load_profile("tiny")
    with pytest.raises(ConfigFileError, match="no such file"):
        load_profile("nowhere/my-run.yaml")


def test_unknown_key_names_the_file_and_the_key_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: demo\ngrpo:\n  betta: 0.02  # typo\n")
    with pytest.raises(ConfigFileError,
                       match=r"profile file .*bad\.yaml \(profile bad\): grpo\.betta: unknown setting"):
        load_profile(str(bad))
    # an error in a parent names the parent, not the child
    child = tmp_path / "child.yaml"
    child.write_text("extends: bad.yaml\n")
    with pytest.raises(ConfigFileError, match=r"bad\.yaml \(profile bad\): grpo\.betta"):
        load_profile(str(child))


def test_extends_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigFileError, match="`extends` makes a cycle"):
        load_profile(str(tmp_path / "a.yaml"))


def test_bad_meta_keys_and_yaml_errors_name_the_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("extends: [paper]\n")
    with pytest.raises(ConfigFileError, match=r"p\.yaml: extends must be a non-empty string"):
        load_profile(str(f))
    f.write_text("grpo:\n  beta: [\n")
    with pytest.raises(ConfigFileError, match=r"profile file .*p\.yaml, line \d+, column \d+: YAML does not parse"):
        load_profile(str(f))


def test_overrides_merge_before_validation_so_derived_defaults_follow():
    # the RL filter samples as GRPO does: an override of GRPO's top_k reaches it
    assert load_profile("demo", {"grpo": {"top_k": 5}}).rl_filter.top_k == 5
    assert load_profile("demo", {"grpo": {"top_k": 5}, "rl_filter": {"top_k": 3}}).rl_filter.top_k == 3
    # a partial section keeps the section's preset (the bench composes from the test pool)
    cfg = ReproductionConfig.model_validate({"compose_bench": {"k_max": 3},
                                             "labeling": {"endpoint": {"concurrency": 2}}})
    assert cfg.compose_bench.pool == "test" and cfg.labeling.endpoint.model == "Qwen2-VL-7B-Instruct"


def test_sections_default_to_the_plain_stage_defaults():
    from deepperception.training.grpo import GRPOStageConfig
    from deepperception.training.sft import SFTStageConfig

    cfg = ReproductionConfig()
    assert cfg.sft == SFTStageConfig() and cfg.grpo == GRPOStageConfig()
