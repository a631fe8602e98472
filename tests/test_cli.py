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
