"""The CLI's own Prefect server: dies with the CLI even on SIGKILL, fails clearly, respects PREFECT_API_URL.

These start real `prefect server start` processes (several seconds each on a loaded machine),
hence `slow`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepperception import prefect_server
from deepperception.prefect_server import PrefectServerError, local_server, pid_file_for, prefect_api

CLI = [sys.executable, "-m", "deepperception.cli"]
# Generous: this is how long a loaded 2-core machine may take, not a performance bound.
STARTUP_S = 240


def _gone(pid: int) -> bool:
    """Dead or a zombie waiting for init to reap it (a zombie runs no code and holds no port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_until(pred, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(home), **extra}
    if "PREFECT_API_URL" not in extra:
        env.pop("PREFECT_API_URL", None)
    return env


def _wait_for_line(proc: subprocess.Popen, text: str) -> list[str]:
    seen = []
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    proc.kill()
    raise AssertionError(f"never printed {text!r}; stdout {seen}; stderr {proc.stderr.read()}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.slow
def test_sigkilled_cli_takes_its_prefect_server_down(tmp_path, monkeypatch):
    home = tmp_path / "prefect"
    monkeypatch.setenv("PREFECT_HOME", str(home))  # where pid_file_for looks
    cli = subprocess.Popen([*CLI, "prefect-check", "--hold", "600"], env=_env(home), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_line(cli, "flow ok")  # the server is up and a flow ran against it
        info = json.loads(pid_file_for(cli.pid).read_text())
        server = info["pid"]
        # The recorded pid is the CLI's own `prefect server start` child, serving the URL used.
        assert Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(cli.pid)  # ppid
        assert b"server\0start" in Path(f"/proc/{server}/cmdline").read_bytes()
        assert not _gone(server)
        cli.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel can clean up
        cli.wait()
        assert _wait_until(lambda: _gone(server), 30), f"prefect server {server} outlived its SIGKILLed CLI"
        port = info["port"]
        with socket.socket() as s:  # and its port is free again
            assert _wait_until(lambda: s.connect_ex(("127.0.0.1", port)) != 0, 30)
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.communicate()


@pytest.mark.slow
def test_explicit_api_url_is_used_and_nothing_is_started(tmp_path, monkeypatch):
    home = tmp_path / "prefect"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with local_server() as srv:  # "the user's own server"
        assert not _gone(srv.pid)
        res = subprocess.run([*CLI, "prefect-check"], env=_env(home, PREFECT_API_URL=srv.api_url), text=True,
                             capture_output=True, timeout=STARTUP_S)
        assert res.returncode == 0, res.stderr
        assert f"api {srv.api_url}" in res.stdout and "flow ok" in res.stdout
        assert "using PREFECT_API_URL" in res.stderr and "started a local server" not in res.stderr
        # set in the active Prefect profile instead of the environment: respected just the same
        (home / "profiles.toml").write_text(f'active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "{srv.api_url}"\n')
        res = subprocess.run([*CLI, "prefect-check"], env=_env(home), text=True, capture_output=True,
                             timeout=STARTUP_S)
        assert res.returncode == 0, res.stderr
        assert f"api {srv.api_url}" in res.stdout and "started a local server" not in res.stderr
        # the only pid file is this test's own server's: the CLI recorded (hence started) none
        assert [p.name for p in home.glob("dp-server-*.json")] == [pid_file_for(os.getpid()).name]
    # a normal exit stops the server and removes its pid file
    assert _wait_until(lambda: _gone(srv.pid), 30)
    assert not srv.pid_file.exists()


def test_prefect_api_respects_preset_url_without_starting(monkeypatch):
    def no_server(*a, **k):
        raise AssertionError("must not start a server when PREFECT_API_URL is set")

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    monkeypatch.setattr(prefect_server, "local_server", no_server)
    with prefect_api() as info:
        assert info.api_url == "http://127.0.0.1:1/api" and info.pid is None
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:1/api"


def test_server_that_exits_at_start_is_reported_with_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    with socket.socket() as held:  # the port is taken, so `prefect server start` exits at once
        held.bind(("127.0.0.1", 0))
        held.listen()
        monkeypatch.setattr(prefect_server, "free_port", lambda: held.getsockname()[1])
        with pytest.raises(PrefectServerError, match=r"exited with code \d+ before answering.*log: ") as e:
            with local_server(timeout_s=STARTUP_S):
                pass
    log = tmp_path / f"dp-server-{os.getpid()}.log"
    assert str(log) in str(e.value) and log.exists()
    assert "already in use" in str(e.value)  # the log's tail says why
    assert e.value.exit_code == 1  # not bad input
    assert not pid_file_for(os.getpid()).exists()


def test_server_that_never_answers_times_out_and_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    started = []
    real_popen = subprocess.Popen

    def popen(*a, **k):
        started.append(real_popen(*a, **k))
        return started[-1]

    monkeypatch.setattr(prefect_server.subprocess, "Popen", popen)
    monkeypatch.setattr(prefect_server, "_healthy", lambda url: False)  # never comes up
    with pytest.raises(PrefectServerError, match=r"did not answer .* within 1 s .*DP_PREFECT_SERVER_TIMEOUT_S"):
        with local_server(timeout_s=1):
            pass
    assert started and started[0].poll() is not None  # the child was stopped, not left behind


def test_stale_pid_files_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"dp-server-{dead_pid}.json"
    stale.write_text(json.dumps({"pid": 1, "cli_pid": dead_pid}))
    live = tmp_path / f"dp-server-{os.getppid()}.json"
    live.write_text(json.dumps({"pid": 1, "cli_pid": os.getppid()}))
    assert prefect_server.remove_stale_pid_files() == [stale]
    assert live.exists() and not stale.exists()


@pytest.mark.parametrize("flag, repair", [([], None), (["--repair"], "1")])
def test_reproduce_runs_the_flow_inside_the_api_context(flag, repair, monkeypatch, tmp_path):
    """`reproduce` validates, enters prefect_api, runs the flow with PREFECT_API_URL set, and
    `--repair` hands DP_STORE_REPAIR=1 to the store."""
    import contextlib

    import flows.reproduce
    from typer.testing import CliRunner

    from deepperception.cli import app
    from deepperception.prefect_server import ServerInfo

    seen = {}

    @contextlib.contextmanager
    def fake_api():
        os.environ["PREFECT_API_URL"] = "http://127.0.0.1:1/api"
        try:
            yield ServerInfo(api_url="http://127.0.0.1:1/api", pid=4321, log=tmp_path / "log", pid_file=None)
        finally:
            os.environ.pop("PREFECT_API_URL", None)

    def fake_flow(profile, overrides, store_uri, force_stages):
        seen.update(api=os.environ.get("PREFECT_API_URL"), repair=os.environ.get("DP_STORE_REPAIR"),
                    profile=profile, store=store_uri, force=force_stages)
        return {"report_markdown": "r.md", "report_json": "r.json", "report": "report@x"}

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("DP_STORE_REPAIR", raising=False)
    monkeypatch.setattr(prefect_server, "prefect_api", fake_api)
    monkeypatch.setattr(flows.reproduce, "reproduce", fake_flow)
    res = CliRunner().invoke(app, ["reproduce", "--profile", "toy", "--store", str(tmp_path), "--force", "sft", *flag])
    os.environ.pop("DP_STORE_REPAIR", None)  # the command sets it for its (in-process) run
    assert res.exit_code == 0, res.output
    assert seen == {"api": "http://127.0.0.1:1/api", "repair": repair, "profile": "toy", "store": str(tmp_path),
                    "force": ["sft"]}
    assert "report artifact:   report@x" in res.output


@pytest.mark.slow
def test_failed_flow_ends_in_one_error_line_not_a_traceback(tmp_path):
    """Prefect logs a failed run's traceback; on the terminal only the message stays, the CLI's
    `error:` line comes last, and no log/event is still being sent to the stopped server."""
    res = subprocess.run([*CLI, "prefect-check", "--fail"], env=_env(tmp_path / "prefect"), text=True,
                         capture_output=True, timeout=STARTUP_S)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "error: [stage=prefect-check row=7] requested failure"
    assert "Encountered exception during execution" in res.stderr  # Prefect's own line, message kept
    assert "Traceback" not in res.stderr and "Error logging to API" not in res.stderr
