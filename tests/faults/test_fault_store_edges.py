"""Store edge faults: disk full while a stage writes its version (more edges: see fault_weed.py)."""

from __future__ import annotations

import errno
import signal
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from deepperception.cli_errors import render_error
from deepperception.store import ArtifactStore, StoreSettings
from deepperception.store.stage import run_stage

ROWS = 400


class _FullDisk(pafs.FileSystemHandler):
    """LocalFileSystem that raises ENOSPC once ``budget`` bytes have been written (a filling disk)."""

    def __init__(self, budget: int) -> None:
        self.fs = pafs.LocalFileSystem()
        self.budget = budget
        self.hits = 0

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def get_type_name(self):
        return "fulldisk"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete the root")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_append_stream(self, path, metadata):
        return self._wrap(self.fs.open_append_stream(path), path)

    def open_output_stream(self, path, metadata):
        return self._wrap(self.fs.open_output_stream(path), path)

    def _wrap(self, stream, path):
        handler = self

        class _Out:
            closed = False

            def write(self, data):
                n = len(memoryview(data).cast("B"))
                if handler.budget - n < 0:
                    handler.hits += 1
                    raise OSError(errno.ENOSPC, "No space left on device", path)
                handler.budget -= n
                return stream.write(data)

            def flush(self):
                stream.flush()

            def close(self):
                self.closed = True
                stream.close()

            def writable(self):
                return True

            def readable(self):
                return False

            def seekable(self):
                return False

            def tell(self):
                return stream.tell()

        return pa.PythonFile(_Out(), mode="w")


def _produce(w):
    for part in range(4):
        ids = list(range(part * ROWS // 4, (part + 1) * ROWS // 4))
        w.write_table(pa.table({"id": ids, "text": [f"row {i} " * 20 for i in ids]}), f"data-{part}")
    return {"n": ROWS}


@pytest.mark.fault("edge.disk_full")
def test_disk_full_commits_nothing_then_rerun_completes(tmp_path, reliability, fault_rng):
    settings = StoreSettings(uri=str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"), lease=False)
    clean = ArtifactStore(StoreSettings(uri=str(tmp_path / "clean"), cache_dir=str(tmp_path / "c2"), lease=False))
    clean_ref, _ = run_stage(clean, "t", "s", {"k": 1}, {}, _produce, task=_produce)
    total = sum(e.bytes for e in clean.manifest(clean_ref).files)
    budget = fault_rng.randint(1, max(2, total - 1))  # the disk fills at a random byte of the version
    store = ArtifactStore(settings)
    handler = _FullDisk(budget)
    store.fs = pafs.PyFileSystem(handler)
    with pytest.raises(Exception) as info:
        run_stage(store, "t", "s", {"k": 1}, {}, _produce, task=_produce)
    message = str(info.value)
    rendered, code = render_error(info.value)  # what `deepperception ...` prints for it
    vdir = tmp_path / "store" / "t"
    visible = [p for p in vdir.rglob("*") if p.is_file() and "_attempts" not in p.parts]
    injected = handler.hits
    assert store.list("t") == [], "a version was committed on a full disk"
    t0 = time.monotonic()
    rerun = ArtifactStore(settings)  # space freed: an ordinary store on the same root
    ref, reused = run_stage(rerun, "t", "s", {"k": 1}, {}, _produce, task=_produce)
    recover_s = time.monotonic() - t0
    got = [i for p in range(4) for i in rerun.read_table(ref, f"data-{p}").column("id").to_pylist()]
    want = [i for p in range(4) for i in clean.read_table(clean_ref, f"data-{p}").column("id").to_pylist()]
    problems = rerun.verify(ref)
    reliability.record(lost=len(set(want) - set(got)), duplicated=len(got) - len(set(got)),
                       corrupted=len(problems) + (ref.version != clean_ref.version) + len(visible), recover_s=recover_s,
                       injected=injected, detail=f"ENOSPC after {budget} of {total} bytes; rerun rewrote the version")
    assert injected >= 1 and not reused
    assert "No space left" in message or "ENOSPC" in message or "space" in message.lower(), message
    assert code == 2 and rendered.startswith("error: No space left on device: ") and "\n" not in rendered, rendered
    assert not visible, f"files of the failed version visible outside its attempt: {visible}"
    assert str(tmp_path / "store") in message, f"error does not name the store path: {message}"
    assert sorted(got) == sorted(want) and not problems and ref.version == clean_ref.version


@pytest.mark.fault("edge.s3_down")
def test_s3_down_fails_bounded_naming_endpoint_then_rerun_completes(tmp_path, reliability, fault_rng, weed):
    import uuid

    try:
        bucket = f"dp-{uuid.uuid4().hex[:10]}"
        weed.client().create_bucket(Bucket=bucket)
        settings = StoreSettings(uri=f"s3://{bucket}/runs", s3_endpoint_url=weed.endpoint,
                                 cache_dir=str(tmp_path / "cache"), lease=False, s3_max_attempts=3)
        store = ArtifactStore(settings)
        sig = fault_rng.choice([signal.SIGKILL, signal.SIGTERM])
        weed.stop(sig)
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            run_stage(store, "t", "s", {"k": 1}, {}, _produce, task=_produce)
        failed_after = time.monotonic() - t0
        rendered, code = render_error(info.value)
        t1 = time.monotonic()
        weed.start()
        committed_while_down = len(ArtifactStore(settings).list("t"))
        ref, reused = run_stage(ArtifactStore(settings), "t", "s", {"k": 1}, {}, _produce, task=_produce)
        recover_s = time.monotonic() - t1
        rerun = ArtifactStore(settings)
        got = [i for p in range(4) for i in rerun.read_table(ref, f"data-{p}").column("id").to_pylist()]
        problems = rerun.verify(ref)
    finally:
        weed.stop()
    reliability.record(lost=len(set(range(ROWS)) - set(got)), duplicated=len(got) - len(set(got)),
                       corrupted=len(problems) + committed_while_down, recover_s=recover_s, injected=1,
                       detail=f"weed stopped ({sig.name}) before the stage; failed after {failed_after:.1f}s; rerun after restart")
    host = weed.endpoint.split("://")[1]
    assert failed_after < 30, f"the stage against a down store took {failed_after:.0f}s to fail"
    assert code == 2 and rendered.startswith("error: S3 store unreachable") and host in rendered, rendered
    assert "\n" not in rendered and not reused and committed_while_down == 0 and not problems


@pytest.mark.fault("edge.disk_full")
def test_a_real_full_tmpfs_commits_nothing_then_rerun_with_space_completes(tmp_path, reliability, fault_rng):
    """The same promise on a real filesystem that fills up: a tmpfs mounted small, grown for the rerun.
    Needs the right to mount (root, CAP_SYS_ADMIN); elsewhere the ENOSPC wrapper above stands in."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    clean = ArtifactStore(StoreSettings(uri=str(tmp_path / "clean"), cache_dir=str(tmp_path / "c2"), lease=False))
    clean_ref, _ = run_stage(clean, "t", "s", {"k": 1}, {}, _produce, task=_produce)
    total_kb = sum(e.bytes for e in clean.manifest(clean_ref).files) // 1024
    size_kb = fault_rng.randint(4, max(4, total_kb // 2))  # fills at a random point of the version
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN); the ENOSPC wrapper test covers it")
    try:
        settings = StoreSettings(uri=str(mnt / "store"), cache_dir=str(tmp_path / "cache"), lease=False)
        with pytest.raises(OSError) as info:
            run_stage(ArtifactStore(settings), "t", "s", {"k": 1}, {}, _produce, task=_produce)
        rendered, code = render_error(info.value)
        visible = [p for p in (mnt / "store").rglob("*") if p.is_file() and "_attempts" not in p.parts]
        committed = len(ArtifactStore(settings).list("t"))
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)  # space freed
        t0 = time.monotonic()
        store = ArtifactStore(settings)
        ref, _ = run_stage(store, "t", "s", {"k": 1}, {}, _produce, task=_produce)
        recover_s = time.monotonic() - t0
        got = [i for p in range(4) for i in store.read_table(ref, f"data-{p}").column("id").to_pylist()]
        problems = store.verify(ref)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    reliability.record(lost=len(set(range(ROWS)) - set(got)), duplicated=len(got) - len(set(got)),
                       corrupted=len(problems) + committed + len(visible), recover_s=recover_s, injected=1,
                       detail=f"a real {size_kb} KiB tmpfs filled up by a {total_kb} KiB version; rerun after growing it to 16 MiB")
    assert code == 2 and rendered.startswith("error: No space left on device") and "\n" not in rendered, rendered
    assert committed == 0 and not visible and not problems and sorted(got) == list(range(ROWS))
    assert ref.version == clean_ref.version
