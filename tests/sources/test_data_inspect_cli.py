"""``data inspect``: one JSON object on stdout; bad input -> ``error: ...`` and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from fixture_trees import build_fgvc_aircraft, build_inat2017
from typer.testing import CliRunner

from deepperception.cli_errors import ErrorHandlingGroup
from deepperception.sources.cli import data_app

KEYS = ["source", "split", "entities", "images", "images_with_box", "missing", "per_entity"]


def _app() -> typer.Typer:
    """The group mounted exactly as the top-level app mounts it."""
    app = typer.Typer(cls=ErrorHandlingGroup, add_completion=False)

    @app.callback()
    def _root() -> None:
        pass

    app.add_typer(data_app, name="data")
    return app


def _run(*args: str):
    return CliRunner().invoke(_app(), ["data", "inspect", *args])


def test_prints_one_json_object(tmp_path):
    tree = build_inat2017(tmp_path / "inat")
    r = _run("--source", "inat2017", "--root", str(tree.root), "--split", "train",
             "--supercategory", "Reptilia", "--supercategory", "Aves")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert list(report) == KEYS and r.stdout.count("\n") == 1
    assert report["entities"] == 6 and report["images"] == 18 and report["images_with_box"] == 18
    assert report["missing"] == 0 and set(report["per_entity"]) == set(tree.entities[:6])


@pytest.mark.parametrize("args, message", [
    (["--source", "imagenet", "--root", "."], "error: unknown source 'imagenet'"),
    (["--source", "food101", "--root", "/nonexistent/food-101"], "does not exist or is not a directory"),
    (["--source", "food101", "--root", ".", "--split", "val"], "error: split must be one of train, test, all"),
])
def test_bad_input_exits_2(args, message):
    r = _run(*args)
    assert r.exit_code == 2 and message in r.stderr, (r.exit_code, r.output)


def test_unreadable_metadata_exits_2_naming_the_file(tmp_path):
    tree = build_fgvc_aircraft(tmp_path / "fgvc")
    (tree.root / "data" / "images_box.txt").unlink()
    r = _run("--source", "fgvc-aircraft", "--root", str(tree.root))
    assert r.exit_code == 2 and "data/images_box.txt is missing" in r.stderr


def test_real_process(tmp_path):
    """``python -m deepperception.sources.cli`` runs the group under the package's error handler."""
    tree = build_fgvc_aircraft(tmp_path / "fgvc", n_variants=2, per_variant=2, test_per_variant=2)
    cmd = [sys.executable, "-m", "deepperception.sources.cli", "data", "inspect", "--source", "fgvc-aircraft",
           "--root", str(tree.root), "--split", "test"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"source": "fgvc-aircraft", "split": "test", "entities": 2, "images": 4,
                                    "images_with_box": 4, "missing": 1, "per_entity": tree.test}
    bad = subprocess.run(cmd[:-4] + ["--root", str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_console_script(tmp_path):
    """The installed ``deepperception data inspect`` (once the top-level app mounts the group)."""
    from deepperception.cli import app

    if "data" not in {g.name for g in app.registered_groups}:
        pytest.skip("`data` is not mounted on deepperception.cli.app yet")
    exe = Path(sys.executable).parent / "deepperception"
    tree = build_fgvc_aircraft(tmp_path / "fgvc", n_variants=2, per_variant=2, test_per_variant=1, missing=1)
    p = subprocess.run([str(exe), "data", "inspect", "--source", "fgvc-aircraft", "--root", str(tree.root)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert list(report) == KEYS and (report["images"], report["missing"]) == (6, 1)


def test_image_folder_split_options_match_collection(tmp_path):
    from fixture_trees import build_image_folder

    from deepperception.sources.collect import SourceSpec, collect_batches

    tree = build_image_folder(tmp_path / "folder", n_entities=2, per_entity=10)
    r = _run("--source", "image-folder", "--root", str(tree.root), "--split", "test",
             "--category", "thing", "--test-fraction", "0.5", "--seed", "4")
    assert r.exit_code == 0, r.output
    spec = SourceSpec(source="image-folder", root=str(tree.root), category="thing", split="seen",
                      test_fraction=0.5, seed=4, min_images_per_entity=1)
    rows = [row for b in collect_batches(spec) for row in b.to_pylist()]
    assert json.loads(r.stdout)["images"] == sum(row["pool"] == "test" for row in rows) > 0
    r = _run("--source", "food101", "--root", str(tree.root), "--seed", "4")
    assert r.exit_code == 2 and "source food101 takes no option seed" in r.stderr
