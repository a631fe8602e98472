"""Work-directory rules of resumable training (no training here)."""

from __future__ import annotations

import json

from deepperception.training.checkpoints import (
    COMPLETE, last_complete_checkpoint, prepare_work_dir, publish_model_copy, published_steps, tidy_work_dir,
)


def _ckpt(root, step, complete=True):
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (d / "model.safetensors").write_bytes(b"w" * 8)
    (d / "optimizer.pt").write_bytes(b"o")
    (d / "config.json").write_text("{}")
    if complete:
        (d / COMPLETE).write_text("")
    return d


def test_a_checkpoint_killed_while_saving_is_ignored(tmp_path):
    _ckpt(tmp_path, 3)
    _ckpt(tmp_path, 6, complete=False)  # SIGKILL during the save: no marker
    (tmp_path / "checkpoint-x").mkdir()
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-3"
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_a_work_dir_of_another_run_is_wiped_the_same_run_kept(tmp_path):
    work = prepare_work_dir(tmp_path / "w", {"config": 1})
    _ckpt(work / "trainer", 2)
    prepare_work_dir(work, {"config": 1})
    assert last_complete_checkpoint(work / "trainer") is not None
    prepare_work_dir(work, {"config": 2})
    assert last_complete_checkpoint(work / "trainer") is None
    assert json.loads((work / "fingerprint.json").read_text()) == {"config": 2}


def test_published_copy_is_model_only_and_does_not_alias_small_files(tmp_path):
    ck = _ckpt(tmp_path / "trainer", 5)
    dest = publish_model_copy(ck, tmp_path / "published" / "step-000005")
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]
    (dest / "config.json").write_text('{"edited": true}')
    assert (ck / "config.json").read_text() == "{}"
    assert published_steps(tmp_path) == {5: dest}
    (tmp_path / "published" / "step-000010.tmp").mkdir()  # an unfinished copy is not a step
    assert list(published_steps(tmp_path)) == [5]


def test_tidy_keeps_what_matters(tmp_path):
    empty = prepare_work_dir(tmp_path / "a", {})
    (empty / "trainer").mkdir()
    tidy_work_dir(empty)
    assert not empty.exists()
    kept = prepare_work_dir(tmp_path / "b", {})
    _ckpt(kept / "trainer", 1)
    tidy_work_dir(kept)
    assert kept.exists()
