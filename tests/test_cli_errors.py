"""One error path for every command: `error: <what>, <where>` + exit 2 for bad input, exit 1 and a
short line for bugs, tracebacks only with --debug. Exit codes and stderr are checked on the real
console entry point in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from deepperception.cli import app
from deepperception.cli_errors import ErrorHandlingGroup, render_error

CLI = [sys.executable, "-m", "deepperception.cli"]


def run(*args: str, cwd=None, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    if "DP_DEBUG" not in env:  # only the tests that ask for tracebacks get them
        full_env.pop("DP_DEBUG", None)
    # A command that wrongly got past validation must not start a Prefect server here.
    full_env.setdefault("PREFECT_API_URL", "http://127.0.0.1:9/api")
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=full_env)


def assert_user_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    first = res.stderr.splitlines()[0]
    assert first.startswith("error: "), res.stderr
    for n in needles:
        assert n in res.stderr, (n, res.stderr)
    return res.stderr


@pytest.fixture
def bench(tmp_path):
    p = tmp_path / "bench.parquet"
    pq.write_table(pa.table({"question_id": ["a", "b"], "category": ["car", "car"], "answer": ["x", "y"]}), p)
    return p


def test_non_utf8_outputs_names_file_and_line(tmp_path, bench):
    outputs = tmp_path / "outputs.jsonl"
    outputs.write_bytes(b'{"question_id": "a", "answer": "ok"}\n{"question_id": "b", "answer": "caf\xe9"}\n')
    res = run("eval", "score", "--bench", str(bench), "--outputs", str(outputs), "--out", str(tmp_path / "o"))
    assert_user_error(res, "outputs.jsonl", "row=2", "line 2", "not valid UTF-8", r"b'\xe9'")
    assert not (tmp_path / "o").exists()  # failed before writing anything


def test_yaml_config_that_is_a_list(tmp_path):
    cfg = tmp_path / "over.yaml"
    cfg.write_text("- sft\n- grpo\n")
    res = run("reproduce", "--profile", "toy", "--config", str(cfg), "--store", str(tmp_path / "store"))
    assert_user_error(res, "over.yaml", "top level must be a mapping", "got a list")
    assert "AttributeError" not in res.stderr


def test_yaml_config_that_does_not_parse_names_file_and_line(tmp_path):
    cfg = tmp_path / "over.yaml"
    cfg.write_text("sft:\n  max_steps: 3\n  learning_rate: [1e-4\n")
    res = run("reproduce", "--profile", "toy", "--config", str(cfg), "--store", str(tmp_path / "store"))
    assert_user_error(res, "over.yaml", "line 4", "YAML does not parse")
    assert "ParserError" not in res.stderr


def test_bad_artifact_ref_is_one_line_exit_2(tmp_path):
    res = run("artifacts", "show", "../etc@passwd", "--store", str(tmp_path))
    err = assert_user_error(res, "../etc")
    assert len(err.strip().splitlines()) == 1
    res = run("artifacts", "show", "bench@nope", "--store", str(tmp_path))
    assert_user_error(res, "bench@nope")


def test_debug_flag_and_env_add_the_traceback_keep_the_code(tmp_path):
    for res in (run("--debug", "artifacts", "show", "bench@nope", "--store", str(tmp_path)),
                run("artifacts", "show", "bench@nope", "--store", str(tmp_path), DP_DEBUG="1")):
        assert res.returncode == 2
        assert "Traceback (most recent call last)" in res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith("error: ") and "bench@nope" in res.stderr


def test_missing_user_paths(tmp_path, bench):
    res = run("eval", "compare", str(tmp_path / "nope-a"), str(tmp_path / "nope-b"))
    assert_user_error(res, "nope-a")
    res = run("reproduce", "--config", str(tmp_path / "missing.yaml"), "--store", str(tmp_path / "s"))
    assert_user_error(res, "missing.yaml", "cannot read")
    res = run("eval", "score", "--bench", str(bench), "--outputs", str(tmp_path / "none.jsonl"),
              "--out", str(tmp_path / "o"))
    assert_user_error(res, "none.jsonl")


def test_usage_errors_keep_clicks_message_and_code():
    res = run("reproduce", "--no-such-flag")
    assert res.returncode == 2
    assert "No such option" in res.stderr and "internal error" not in res.stderr


def _words(text: str) -> str:
    """Help text without rich's box drawing and line wrapping."""
    return " ".join(w for w in text.split() if w.strip("│╭╮╰╯─"))


def test_help_documents_exit_codes_and_flags():
    res = run("--help")
    assert res.returncode == 0
    assert "--debug" in res.stdout and "1 internal error" in _words(res.stdout)
    res = run("reproduce", "--help")
    assert "--repair" in res.stdout
    assert "recompute a reused version whose files fail verification" in _words(res.stdout)


def test_internal_error_is_short_and_exits_1(monkeypatch, tmp_path, bench):
    """A bug (here: KeyError from inside scoring) is not dressed up as bad input."""
    import deepperception.eval.cli as eval_cli

    def broken(*a, **k):
        raise KeyError("oops")

    monkeypatch.setattr(eval_cli, "score", broken)
    outputs = tmp_path / "o.jsonl"
    outputs.write_text("")
    res = CliRunner().invoke(app, ["eval", "score", "--bench", str(bench), "--outputs", str(outputs),
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "error: internal error: KeyError: 'oops' (rerun with --debug for the traceback)" in res.output
    assert "Traceback" not in res.output


def test_same_rendering_under_cli_runner_as_in_a_process(tmp_path):
    """In-process callers (tests) see the same code, and the message in ``result.exception``."""
    res = CliRunner().invoke(app, ["artifacts", "show", "bench@nope", "--store", str(tmp_path)])
    assert res.exit_code == 2 and "error: " in res.output
    assert "bench@nope" in str(res.exception)


def test_every_mounted_group_uses_the_one_handler():
    """Sub-apps that run on their own (eval) must not fall back to raw tracebacks either."""
    from deepperception.eval.cli import eval_app

    root = typer.main.get_command(app)
    assert isinstance(root, ErrorHandlingGroup)
    assert isinstance(typer.main.get_command(eval_app), ErrorHandlingGroup)
    assert {"reproduce", "artifacts", "eval"} <= set(root.commands)


@pytest.mark.parametrize("exc, code, needle", [
    (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"), 2, "offset 2"),
    (json.JSONDecodeError("Expecting value", "x", 0), 2, "Expecting value"),
    (PermissionError(13, "Permission denied", "runs/x.jsonl"), 2, "Permission denied: runs/x.jsonl"),
    (OSError("disk on fire"), 1, "internal error: OSError: disk on fire"),
    (RuntimeError(""), 1, "internal error: RuntimeError (rerun"),
])
def test_render_error_classes(exc, code, needle):
    msg, got = render_error(exc)
    assert got == code and needle in msg and msg.startswith("error: ")


def test_pydantic_error_is_rendered_field_by_field():
    from pydantic import BaseModel, Field, ValidationError

    class M(BaseModel):
        a: int = Field(gt=0)
        b: str

    with pytest.raises(ValidationError) as e:
        M(a=-1, b=3)
    msg, code = render_error(e.value)
    assert code == 2
    assert msg.splitlines()[1:] == ["  a: Input should be greater than 0 (got -1)",
                                    "  b: Input should be a valid string (got 3)"]


def test_yaml_error_without_a_file_still_has_the_line():
    import yaml

    with pytest.raises(yaml.YAMLError) as e:
        yaml.safe_load("a: [1\n")
    msg, code = render_error(e.value)
    assert code == 2 and "line 2" in msg and msg.startswith("error: YAML does not parse")


def test_hide_console_tracebacks_only_touches_console_handlers():
    import io
    import logging

    from deepperception.cli_errors import hide_console_tracebacks

    class Keeper(logging.Handler):  # stands for Prefect's API log handler (the UI keeps tracebacks)
        def __init__(self):
            super().__init__()
            self.texts = []

        def emit(self, record):
            self.texts.append(self.format(record))

    log = logging.getLogger("dp-test-hide")
    log.propagate = False
    console_stream = io.StringIO()
    console, keeper = logging.StreamHandler(console_stream), Keeper()
    log.handlers = [console, keeper]
    try:
        assert hide_console_tracebacks() >= 1
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("stage failed")
        assert console_stream.getvalue() == "stage failed\n"
        assert "Traceback" in keeper.texts[0] and "ValueError: boom" in keeper.texts[0]
    finally:
        log.handlers = []
