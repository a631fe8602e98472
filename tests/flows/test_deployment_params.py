"""What a user types into a deployment's form: every parameter described, the profile a dropdown,
references as `name@version` / `name@latest` strings, bad parameters refused before any work
with a message naming the parameter, run names that say what ran, reuse in the run log, and no
environment template text reaching the store."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _deployment_flows():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        yield dep, getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)


def test_every_top_level_parameter_of_every_deployment_has_a_description():
    from prefect.utilities.callables import parameter_schema

    seen = set()
    for dep, fl in _deployment_flows():
        props = parameter_schema(fl).model_dump()["properties"]
        missing = [p for p, s in props.items() if not (s.get("description") or "").strip()]
        assert not missing, (dep["name"], missing)
        seen.add(dep["name"])
    assert {"full-reproduction", "evaluate-on-publish", "train-grpo", "evaluate-checkpoint"} <= seen


def test_described_refuses_a_parameter_without_a_description():
    from flows.params import described

    with pytest.raises(TypeError, match=r"no description for parameter\(s\) \['mystery'\]"):
        @described(known="documented")
        def fn(known: int, mystery: int, store_uri: str | None = None):
            """A flow."""


def test_the_full_reproduction_form_is_a_profile_dropdown_overrides_and_dispatch():
    from prefect.utilities.callables import parameter_schema

    from deepperception.config import shipped_profiles
    from flows.reproduce import reproduce

    props = parameter_schema(reproduce).model_dump()["properties"]
    assert props["profile"]["enum"] == list(shipped_profiles())
    assert props["dispatch"]["enum"] == ["auto", "inline", "deployments"] and props["dispatch"]["default"] == "auto"
    assert {"type": "object", "additionalProperties": True} in props["overrides"]["anyOf"]
    assert "config" not in props


def test_stage_flows_take_references_as_strings():
    from deepperception.store import ArtifactRef
    from flows import stages
    from flows.params import ref_text

    params = stages.train_sft.validate_parameters(
        {"config": {}, "base": "base-checkpoint@latest", "dataset": {"name": "sft-dataset", "version": "v1"}})
    assert params["base"] == ArtifactRef(name="base-checkpoint", version="latest")
    assert params["dataset"] == ArtifactRef(name="sft-dataset", version="v1")
    card = stages.write_data_card.validate_parameters({"refs": {"bench": "bench@v2"}})
    assert card["refs"] == {"bench": ArtifactRef(name="bench", version="v2")}
    assert ref_text({"base": params["base"], "n": [params["dataset"]]}) == {"base": "base-checkpoint@latest",
                                                                            "n": ["sft-dataset@v1"]}
    with pytest.raises(Exception, match="not of the form name@version"):
        stages.train_sft.validate_parameters({"config": {}, "base": "base-checkpoint", "dataset": "d@v"})


def test_prefect_yaml_templates_no_environment_and_the_store_refuses_template_text(monkeypatch, tmp_path):
    from deepperception.errors import ConfigError
    from deepperception.store import ArtifactStore, StoreSettings

    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert not [s for s in strings(spec) if "{{ $" in s or "{{$" in s]
    monkeypatch.setenv("DP_STORE_S3_ENDPOINT_URL", "{{ $DP_STORE_S3_ENDPOINT_URL }}")
    with pytest.raises(ConfigError, match="^DP_STORE_S3_ENDPOINT_URL is '{{ \\$DP_STORE_S3_ENDPOINT_URL }}'"):
        ArtifactStore.from_uri(str(tmp_path / "s"))
    monkeypatch.delenv("DP_STORE_S3_ENDPOINT_URL")
    monkeypatch.setenv("DP_STORE_URI", "{{ $DP_STORE_URI }}")
    with pytest.raises(ConfigError, match="^DP_STORE_URI is"):
        ArtifactStore.from_uri(None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "{{ $AWS_ENDPOINT_URL }}")
    with pytest.raises(ConfigError, match="^AWS_ENDPOINT_URL is"):
        StoreSettings(uri="s3://bucket/p")._endpoint()
    assert not (tmp_path / "s").exists()


# ---- real runs under the test server ---------------------------------------------------------

def _run(fl, **params):
    """``(state, flow run)`` of calling a flow (a failed run does not raise)."""
    from prefect.client.orchestration import get_client

    state = fl(**params, return_state=True)
    with get_client(sync_client=True) as client:
        return state, client.read_flow_run(state.state_details.flow_run_id)


def _failure(state) -> str:
    assert state.is_failed(), state
    return f"{state.message} {state.result(raise_on_failure=False)!r}"


def _logs(flow_run_id, needle: str, wait_s: float = 20.0) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            found = [lg.message for lg in logs if needle in lg.message]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


def test_bad_parameters_are_refused_before_any_work_naming_the_parameter(prefect_harness, tmp_path):
    from deepperception.config import EvalStageConfig, profile
    from deepperception.store import ArtifactStore, StoreSettings
    from deepperception.version import config_hash
    from flows import stages
    from flows.reproduce import reproduce

    uri = str(tmp_path / "store")
    store = ArtifactStore(StoreSettings(uri=uri))
    cfg = profile("toy")

    # A checkpoint reference the store does not have: refused, named; the run is named by its label.
    state, run = _run(stages.evaluate_checkpoint, config=EvalStageConfig(), label="sft",
                      checkpoint="sft-checkpoint@latest", bench="bench@latest", store_uri=uri)
    text = _failure(state)
    assert "parameter 'checkpoint'" in text and "no committed version of 'sft-checkpoint'" in text
    assert run.name == "evaluate-checkpoint[sft]"

    # GRPO: the run name carries the config hash (the manifest's config_hash of its version).
    state, run = _run(stages.train_grpo, config=cfg.grpo, checkpoint="sft-checkpoint@0123abcd",
                      dataset="grpo-dataset@latest", store_uri=uri)
    assert "parameter 'checkpoint'" in _failure(state) and "does not exist" in _failure(state)
    assert run.name == f"train-grpo[cfg {config_hash(cfg.grpo)[:8]}]"

    # A config that fails validation: refused by Prefect's parameter validation, naming the field.
    state, _ = _run(stages.train_sft, config={"max_steps": "many"}, base="b@v", dataset="d@v", store_uri=uri)
    assert "Validation of flow parameters failed" in _failure(state) and "max_steps" in _failure(state)

    # The full reproduction: an unknown stage, an unknown setting, an unknown profile.
    state, _ = _run(reproduce, profile="toy", force_stages=["sft", "nope"], store_uri=uri, dispatch="inline")
    assert "force_stages.1: Input should be 'mine'" in _failure(state)  # the bad entry, and the choices
    state, run = _run(reproduce, profile="toy", overrides={"grpo": {"betta": 0.02}}, store_uri=uri, dispatch="inline")
    assert "the overrides parameter (profile toy): grpo.betta: unknown setting" in _failure(state)
    assert run.name.startswith("reproduce[toy +overrides ")
    state, _ = _run(reproduce, profile="tiny", store_uri=uri)
    assert "profile" in _failure(state) and "toy" in _failure(state)  # the message lists the choices
    state, _ = _run(reproduce, profile_file=str(tmp_path / "mine.yaml"), store_uri=uri, dispatch="inline")
    assert "mine.yaml: no such file" in _failure(state)
    assert store.list() == []  # nothing ran


def test_latest_references_resolve_and_a_rerun_logs_its_reuse(prefect_harness, tmp_path):
    from deepperception.config import profile
    from flows import stages
    from flows.params import ParameterError, resolve_dispatch, resolve_refs
    from flows.reproduce import GPU_DEPLOYMENTS

    uri = str(tmp_path / "store")
    cfg = profile("toy")
    first, run1 = _run(stages.mine_entities, config=cfg.data, store_uri=uri, knowledge=cfg.knowledge)
    entities = first.result()
    assert run1.name.startswith("mine-entities[cfg ")
    again, run2 = _run(stages.mine_entities, config=cfg.data, store_uri=uri, knowledge=cfg.knowledge)
    assert again.result() == entities
    # The library's "reusing" line reaches the rerun's log in the Prefect API (the UI's run log).
    assert _logs(run2.id, f"reusing {entities}"), "the rerun's log does not say what it reused"
    assert not _logs(run1.id, "reusing", wait_s=0)

    assert resolve_refs(uri, entities="entities@latest", none=None) == {"entities": entities, "none": None}
    with pytest.raises(ParameterError, match=r"parameter \"refs\['cot'\]\": .*no committed version of 'cot'"):
        resolve_refs(uri, refs={"entities": str(entities), "cot": "cot@latest"})
    # This API has no gpu pool: dispatch=auto runs the GPU stages in the reproduction's process.
    assert resolve_dispatch("auto", GPU_DEPLOYMENTS.values()) == "inline"
