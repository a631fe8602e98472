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
