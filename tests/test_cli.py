"""`deepperception artifacts ls/show` against a local store and an S3 endpoint."""

import json

import pyarrow as pa
from typer.testing import CliRunner

from deepperception.cli import app
from deepperception.store import ArtifactStore, StoreSettings


def _commit(store, name="entities", up=None):
    with store.plan(name, "mine", {"seed": 1}, up or {}) as w:
        w.write_table(pa.table({"a": [1, 2]}))
        return w.commit({"rows": 2})


def test_artifacts_ls_and_show_local(tmp_path):
    store = ArtifactStore(StoreSettings(uri=str(tmp_path / "s")))
    ent = _commit(store)
    img = _commit(store, "images", {"entities": ent})
    runner = CliRunner()
    res = runner.invoke(app, ["artifacts", "ls", "--store", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert str(ent) in res.output and str(img) in res.output
    res = runner.invoke(app, ["artifacts", "show", str(img), "--store", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.output.split("# location:")[0])
    assert manifest["upstream"] == {"entities": str(ent)} and manifest["files"][0]["rows"] == 2


def test_artifacts_ls_on_s3(s3_store_uri, tmp_path):
    uri, endpoint = s3_store_uri
    store = ArtifactStore(StoreSettings(uri=uri, s3_endpoint_url=endpoint))
    ref = _commit(store)
    res = CliRunner().invoke(app, ["artifacts", "ls", "--store", uri, "--s3-endpoint", endpoint])
    assert res.exit_code == 0, res.output
    assert str(ref) in res.output


def test_show_unknown_version_fails_with_name(tmp_path):
    res = CliRunner().invoke(app, ["artifacts", "show", "bench@nope", "--store", str(tmp_path)])
    assert res.exit_code != 0
    assert "bench@nope" in str(res.exception)


def _flip(store, ref, path):
    p = store.file_path(ref, path)
    with store.fs.open_input_stream(p) as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0x01
    with store.fs.open_output_stream(p) as f:
        f.write(bytes(data))


def test_artifacts_verify_reports_each_version_and_exits_2_on_corruption(tmp_path):
    root = str(tmp_path / "s")
    store = ArtifactStore(StoreSettings(uri=root))
    ent = _commit(store)
    img = _commit(store, "images", {"entities": ent})
    runner = CliRunner()
    res = runner.invoke(app, ["artifacts", "verify", "--store", root])
    assert res.exit_code == 0, res.output
    assert f"ok {ent} (1 files)" in res.output and f"ok {img} (1 files)" in res.output

    _flip(store, img, "data.parquet")  # same size: only the re-hash sees it
    res = runner.invoke(app, ["artifacts", "verify", "--store", root])
    assert res.exit_code == 2
    assert f"CORRUPT {img}: file data.parquet: sha256" in res.output and f"ok {ent}" in res.output
    assert f"error: 1 corrupt version(s) in {root}: {img}" in res.output
    assert runner.invoke(app, ["artifacts", "verify", "--quick", "--store", root]).exit_code == 0
    res = runner.invoke(app, ["artifacts", "verify", "entities", "--store", root])
    assert res.exit_code == 0 and str(img) not in res.output
    res = runner.invoke(app, ["artifacts", "verify", "images@latest", "--store", root])
    assert res.exit_code == 2 and f"CORRUPT {img}" in res.output


def test_artifacts_verify_on_s3(s3_store_uri):
    uri, endpoint = s3_store_uri
    store = ArtifactStore(StoreSettings(uri=uri, s3_endpoint_url=endpoint))
    ref = _commit(store)
    runner = CliRunner()
    res = runner.invoke(app, ["artifacts", "verify", str(ref), "--store", uri, "--s3-endpoint", endpoint])
    assert res.exit_code == 0 and f"ok {ref}" in res.output, res.output
    _flip(store, ref, "data.parquet")
    res = runner.invoke(app, ["artifacts", "verify", str(ref), "--store", uri, "--s3-endpoint", endpoint])
    assert res.exit_code == 2 and f"CORRUPT {ref}: file data.parquet" in res.output


def test_show_refuses_a_ref_outside_the_store(tmp_path):
    # A manifest planted next to the store: `../outside@v1` must not reach it.
    planted = tmp_path / "outside" / "v1"
    planted.mkdir(parents=True)
    from deepperception.store import Manifest

    fake = Manifest(name="outside", version="v1", stage="s", created_at="2026-01-01T00:00:00+00:00", config={},
                    config_hash="c", code_version="0", files=[], metadata={"secret": "planted"})
    (planted / "_manifest.json").write_text(fake.model_dump_json())
    res = CliRunner().invoke(app, ["artifacts", "show", "../outside@v1", "--store", str(tmp_path / "store")])
    assert res.exit_code != 0
    assert "planted" not in res.output
    assert "'../outside'" in (res.output + str(res.exception))
    res = CliRunner().invoke(app, ["artifacts", "verify", "../outside", "--store", str(tmp_path / "store")])
    assert res.exit_code != 0 and "'../outside'" in (res.output + str(res.exception))


def test_artifacts_verify_on_an_empty_store_and_an_unknown_name(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["artifacts", "verify", "--store", str(tmp_path / "s")])
    assert res.exit_code == 0 and "no artifacts in" in res.output
    res = runner.invoke(app, ["artifacts", "verify", "bench", "--store", str(tmp_path / "s")])
    assert res.exit_code != 0 and "bench has no committed version" in (res.output + str(res.exception))


def test_artifacts_files_lists_every_part_for_other_readers(tmp_path):
    import duckdb

    store = ArtifactStore(StoreSettings(uri=str(tmp_path / "s")))
    with store.plan("cot", "distill", {"k": 1}, {}) as w:
        with w.table_writer("data", max_rows=3) as tw:
            tw.write(pa.table({"q": list(range(7))}))
        ref = w.commit({})
    res = CliRunner().invoke(app, ["artifacts", "files", "cot@latest", "--store", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    paths = res.output.split()
    assert len(paths) == 3 and all(p.endswith(".parquet") for p in paths)
    assert duckdb.sql(f"select sum(q) from read_parquet({paths!r})").fetchall() == [(21,)]
    res = CliRunner().invoke(app, ["artifacts", "files", str(ref), "--table", "nope", "--store", str(tmp_path / "s")])
    assert res.exit_code == 2 and "no table 'nope'" in res.output


def test_profiles_lists_every_shipped_file_with_its_description():
    from deepperception.config import profile_description, shipped_profiles

    res = CliRunner().invoke(app, ["profiles"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for name in shipped_profiles():
        assert any(ln.startswith(name + " ") and profile_description(name) in ln for ln in lines), (name, res.output)
    assert any(ln.startswith("paper-0.85 ") and ln.endswith("(extends paper)") for ln in lines)


def test_profiles_show_prints_the_resolved_config_with_overrides(tmp_path):
    import yaml

    from deepperception.config import load_profile

    over = tmp_path / "over.yaml"
    over.write_text("grpo: {beta: 0.06, learning_rate: 2.0e-6}\n")
    res = CliRunner().invoke(app, ["profiles", "show", "paper-0.85", "--config", str(over), "--set", "grpo.beta=0.02"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].startswith("# paper-0.85: field defaults -> paper -> paper-0.85 + ")
    shown = yaml.safe_load(res.output)
    want = load_profile("paper-0.85", {"grpo": {"beta": 0.02, "learning_rate": 2e-6}}).model_dump(mode="json")
    assert shown == want and shown["grpo"]["iou_threshold"] == 0.85 and shown["grpo"]["beta"] == 0.02


def _fake_reproduce(monkeypatch, tmp_path):
    import contextlib

    import flows.reproduce
    from deepperception import prefect_server
    from deepperception.prefect_server import ServerInfo

    seen = {}

    @contextlib.contextmanager
    def fake_api():
        yield ServerInfo(api_url="http://127.0.0.1:1/api", pid=None, log=tmp_path / "log", pid_file=None)

    def fake_flow(overrides, store_uri, force_stages, profile=None, profile_file=None):
        seen.update(profile=profile, profile_file=profile_file, overrides=overrides, store=store_uri,
                    force=force_stages)
        return {"report_markdown": "r.md", "report_json": "r.json", "report": "report@x"}

    monkeypatch.setattr(prefect_server, "prefect_api", fake_api)
    monkeypatch.setattr(flows.reproduce, "reproduce", fake_flow)
    return seen


def test_reproduce_passes_profile_and_merged_overrides_to_the_flow(monkeypatch, tmp_path):
    seen = _fake_reproduce(monkeypatch, tmp_path)
    over = tmp_path / "over.yaml"
    over.write_text("grpo: {beta: 0.06, max_steps: 3}\n")
    res = CliRunner().invoke(app, ["reproduce", "--profile", "toy", "--config", str(over), "--set", "grpo.beta=0.02",
                                   "--set", "comparison.direct_sft=true", "--store", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    # --set is applied after --config
    assert seen["profile"] == "toy" and seen["overrides"] == {"grpo": {"beta": 0.02, "max_steps": 3},
                                                              "comparison": {"direct_sft": True}}
    assert "report artifact:   report@x" in res.output


def test_reproduce_takes_a_profile_file(monkeypatch, tmp_path):
    seen = _fake_reproduce(monkeypatch, tmp_path)
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: toy\nsft: {max_steps: 1}  # quicker\n")
    res = CliRunner().invoke(app, ["reproduce", "--profile", str(mine), "--store", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert seen["profile_file"] == str(mine) and seen["profile"] is None and seen["overrides"] is None


def test_reproduce_refuses_bad_settings_in_one_line_naming_the_key_path(monkeypatch, tmp_path):
    seen = _fake_reproduce(monkeypatch, tmp_path)
    runner = CliRunner()
    for args, needle in [
        (["--set", "grpo.betta=0.02"], "error: --set (profile toy): grpo.betta: unknown setting"),
        (["--set", "grpo.beta=fast"], "error: --set (profile toy): grpo.beta: Input should be a valid number"),
        (["--set", "grpo.beta"], "error: --set 'grpo.beta': expected key.path=value"),
        (["--set", "grpo.beta=[1,"], "error: --set grpo.beta: value '[1,' does not parse as YAML"),
        (["--profile", "tiny"], "error: unknown profile 'tiny'; shipped profiles: ablation-direct-sft, demo, paper"),
    ]:
        res = runner.invoke(app, ["reproduce", *(["--profile", "toy"] if args[0] != "--profile" else []), *args])
        assert res.exit_code == 2, (args, res.output)
        assert str(res.exception).startswith(needle) and "\n" not in str(res.exception), (args, str(res.exception))
    assert seen == {}  # nothing ran
