"""Names, versions and file paths cannot leave the store root or hide among its bookkeeping."""

import pyarrow as pa
import pytest

from deepperception.errors import ArtifactError, InvalidRefError
from deepperception.store import ArtifactRef, ArtifactStore, StoreSettings

BAD = ["../outside", "a/b", "/abs", "..", ".hidden", "_store", "a..b", "", "x" * 129, "a b", "é", "a\\b",
       "-dash", "v1\n", "a:b"]


@pytest.mark.parametrize("bad", BAD)
def test_bad_names_and_versions_are_refused_naming_the_text(bad):
    for kwargs in ({"name": bad, "version": "v1"}, {"name": "ok", "version": bad}):
        with pytest.raises(InvalidRefError) as err:
            ArtifactRef(**kwargs)
        assert repr(bad) in str(err.value)
        assert isinstance(err.value, ValueError) and isinstance(err.value, ArtifactError)


@pytest.mark.parametrize("good", ["sft-checkpoint", "A.b_c-1", "latest", "0" * 128, "v1.2"])
def test_plain_identifiers_are_accepted(good):
    assert ArtifactRef(name=good, version=good).name == good


def test_parse_refuses_traversal_and_missing_version():
    with pytest.raises(InvalidRefError, match=r"'\.\./outside'"):
        ArtifactRef.parse("../outside@v1")
    with pytest.raises(InvalidRefError, match="name@version"):
        ArtifactRef.parse("bench")


def test_store_paths_cannot_escape_the_root(tmp_path):
    store = ArtifactStore(StoreSettings(uri=str(tmp_path / "store")))
    for parts in (("..", "x"), ("a", "../../x"), ("/etc",), ("a//b",)):
        with pytest.raises(InvalidRefError):
            store._path(*parts)
    with pytest.raises(InvalidRefError, match="'../x'"):
        store.plan("../x", "s", {}, {})
    with store.plan("t", "s", {}, {}) as w:
        for rel in ("../../escape.bin", "/abs.bin", "files/./x", "files//x"):
            with pytest.raises(InvalidRefError, match="file path"):
                w.write_bytes(rel, b"x")
        w.write_bytes("files/ok.bin", b"x")
        w.commit()
    assert not (tmp_path / "escape.bin").exists()


def test_latest_resolves_to_the_newest_committed_version(tmp_path):
    store = ArtifactStore(StoreSettings(uri=str(tmp_path / "store")))
    with pytest.raises(ArtifactError, match="no committed version"):
        store.resolve(ArtifactRef.parse("t@latest"))
    refs = []
    for k in (1, 2):
        with store.plan("t", "s", {"k": k}, {}) as w:
            w.write_table(pa.table({"k": [k]}))
            refs.append(w.commit())
    assert store.resolve(ArtifactRef.parse("t@latest")) == refs[1]
    assert store.resolve(refs[0]) == refs[0]


def test_a_tampered_manifest_cannot_point_outside_its_version(tmp_path):
    store = ArtifactStore(StoreSettings(uri=str(tmp_path / "store")))
    (tmp_path / "secret.bin").write_bytes(b"secret")
    with store.plan("t", "s", {}, {}) as w:
        w.write_bytes("files/a.bin", b"secret")
        ref = w.commit()
    manifest = tmp_path / "store" / ref.name / ref.version / "_manifest.json"
    body = manifest.read_text()
    key = store.manifest(ref).file("files/a.bin").key
    manifest.write_text(body.replace(key, "../../../secret.bin"))
    with pytest.raises(ArtifactError, match="manifest .* is corrupt"):
        store.read_bytes(ref, "files/a.bin")
    (problem,) = store.verify(ref)
    assert problem.startswith("manifest:") and "'../../../secret.bin'" in problem
