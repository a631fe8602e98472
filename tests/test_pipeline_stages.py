"""The one stage catalogue (deepperception.pipeline_stages) agrees with what is deployed
(prefect.yaml) and with the stage flows (flows/stages.py): a stage added, renamed or moved to
another pool in one place and not the other fails here."""

from __future__ import annotations

from pathlib import Path

import yaml

from deepperception.pipeline_stages import BY_FLOW, CATALOGUE, GPU_DEPLOYMENTS, STAGES

ROOT = Path(__file__).resolve().parents[1]


def test_the_catalogue_matches_prefect_yaml_and_the_stage_flows():
    from prefect import Flow

    from flows import stages

    flows = {obj.name: name for name, obj in vars(stages).items() if isinstance(obj, Flow)}
    assert set(flows) == set(BY_FLOW), "every stage flow has one catalogue entry, and only those"
    assert len(STAGES) == len(set(STAGES)) == len(CATALOGUE)

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployed = {d["name"]: d for d in spec["deployments"] if d["entrypoint"].startswith("flows/stages.py:")}
    assert set(deployed) == {s.flow for s in CATALOGUE if s.deployed}
    for s in CATALOGUE:
        if s.deployed:
            d = deployed[s.flow]
            assert d["entrypoint"] == f"flows/stages.py:{flows[s.flow]}", s
            assert d["work_pool"]["name"] == s.pool, s
            assert s.deployment == f"{s.flow}/{d['name']}"


def test_the_parent_dispatches_to_the_catalogues_gpu_deployments():
    from flows.reproduce import GPU_DEPLOYMENTS as dispatched

    assert dispatched == GPU_DEPLOYMENTS == {
        "train-sft": "train-sft/train-sft", "rl-filter": "rl-filter/rl-filter",
        "train-grpo": "train-grpo/train-grpo", "evaluate-checkpoint": "evaluate-checkpoint/evaluate-checkpoint"}
