"""Screenshots of a reproduction in the Prefect UI, taken by headless Chromium (``make screenshots``).

What it does, all on loopback and in throwaway directories:

1. starts its own Prefect server with the UI on (``python -m prefect server start``, a free port,
   a temporary ``PREFECT_HOME``; ``PREFECT_UI_API_URL`` set so the UI talks to that port);
2. runs a reproduction (profile ``toy`` by default, GPU stages inline) against it, into a
   temporary store;
3. opens the parent flow run's page, its Artifacts tab, each of the parent's artifacts (report,
   metrics table, artifact versions) and a stage's progress artifact in Chromium (Playwright
   driving the system's ``chromium``, never a downloaded browser) and saves PNGs;
4. checks what the report page shows (``Acc@0.5`` is text, not a mail link; ``<answer>`` is
   visible), stops the server and removes the directories.

``python infra/ui/screenshots.py [--out docs/screenshots] [--profile toy]``; exits non-zero when a
check fails. ``tests/infra/test_screenshots.py`` drives the same functions on a tiny flow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
VIEWPORT = {"width": 1680, "height": 1000}
MAX_HEIGHT = 7000  # px: a long report is photographed whole, up to this


def find_chromium() -> str | None:
    """The system Chromium (``DP_CHROMIUM`` wins), or None: Playwright is pointed at it, so no
    browser download is ever needed."""
    explicit = os.environ.get("DP_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, body: dict | None = None, timeout: float = 10) -> Any:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback only
        return json.loads(r.read() or b"null")


@contextmanager
def ui_server(home: Path, port: int | None = None, startup_timeout: float = 180) -> Iterator[str]:
    """A Prefect server with its UI on ``127.0.0.1:<port>`` (free port by default) and its
    database in ``home``; yields the API URL (``.../api``). Stopped (SIGTERM, then SIGKILL) on exit."""
    port = port or free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": api}
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}; see {home / 'server.log'}")
            try:
                if _get_json(f"{api}/health", timeout=2) is True:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not healthy after {startup_timeout:.0f} s; see {home / 'server.log'}")
            time.sleep(0.5)
        yield api
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def artifacts_of(api: str, flow_run_ids: list[str] | None = None, kind: str | None = None) -> list[dict]:
    """Artifacts (API JSON) of the given flow runs and/or of one type, oldest first."""
    flt: dict[str, Any] = {}
    if flow_run_ids:
        flt["flow_run_id"] = {"any_": flow_run_ids}
    if kind:
        flt["type"] = {"any_": [kind]}
    return _get_json(f"{api}/artifacts/filter", {"artifacts": flt, "sort": "CREATED_DESC"})[::-1]


def _settle(page, text: str | None = None, timeout_ms: int = 30000) -> None:
    page.wait_for_load_state("networkidle", timeout=timeout_ms)
    if text:
        page.get_by_text(text, exact=False).first.wait_for(timeout=timeout_ms)
    page.wait_for_timeout(800)  # charts and markdown finish laying out


def _fit_height(page) -> None:
    """The UI scrolls inside its own panes, so a full-page screenshot is one screen: grow the
    viewport to the tallest scrolling element instead (capped at MAX_HEIGHT)."""
    height = page.evaluate("Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(int(height) + 40,
                                                                                             MAX_HEIGHT))})
    page.wait_for_timeout(500)


def mail_link_problems(page, where: str) -> list[str]:
    """A mail link on an artifact page is Markdown gone wrong (``Acc@0.5`` auto-linked)."""
    mail = page.locator("a[href^='mailto:']")
    if mail.count():
        return [f"{where}: {mail.count()} mail link(s), e.g. {mail.first.inner_text()!r} (Acc@0.5 must stay text)"]
    return []


def report_page_checks(page) -> list[str]:
    """What must hold on a rendered report: returns the problems (empty: all good)."""
    problems = mail_link_problems(page, "report")
    body = page.locator("body").inner_text()
    if "Acc@0.5" not in body:
        problems.append("'Acc@0.5' is not shown as text")
    if "<answer>" not in body:
        problems.append("'<answer>' is not shown (stripped as an HTML tag?)")
    return problems


def pick_progress(bars: list[dict]) -> dict:
    """The progress artifact to show: training steps first, then evaluation questions, then
    labeling images, else the newest.

    >>> pick_progress([{"key": "progress-label-boxes"}, {"key": "progress-train-grpo"}])["key"]
    'progress-train-grpo'
    """
    for prefix in ("progress-train-grpo", "progress-train-sft", "progress-evaluate", "progress-label"):
        for b in bars:
            if (b.get("key") or "").startswith(prefix):
                return b
    return bars[-1]


PAGES = ("flow-run", "flow-run-artifacts", "report", "metrics", "artifact-versions", "progress", "progress-run",
         "run-form")
FULL_REPRODUCTION = "reproduce/full-reproduction"  # its Run form is shot when the server has it (make up)


def _deployment(api: str, name: str) -> dict | None:
    """The deployment ``flow/name`` on the server at ``api``, or None (a throwaway server has none)."""
    try:
        return _get_json(f"{api}/deployments/name/{name}")
    except Exception:  # noqa: BLE001 - 404 or an older server: that page is simply not shot
        return None


def shoot(api: str, flow_run_id: str, out: Path, chromium: str,
          pages: tuple[str, ...] = PAGES) -> tuple[dict[str, Path], list[str]]:
    """Screenshots of the parent run ``flow_run_id`` and its artifacts into ``out`` (the
    ``pages`` of :data:`PAGES`); returns ``({name: png}, problems)``. The parent's three
    artifacts and a progress artifact must exist whatever the pages."""
    from playwright.sync_api import sync_playwright

    ui = api.removesuffix("/api")
    out.mkdir(parents=True, exist_ok=True)
    shots: dict[str, Path] = {}
    problems: list[str] = []
    own = {a["key"]: a for a in artifacts_of(api, [flow_run_id])}
    # Progress bars are on the stage runs (subflows, or deployment runs of the gpu pool): those
    # created while the parent ran (a shared server may hold other runs' bars).
    parent = _get_json(f"{api}/flow_runs/{flow_run_id}")
    start, end = parent.get("start_time") or "", parent.get("end_time") or "9999"
    progress = [a for a in artifacts_of(api, kind="progress")
                if a.get("flow_run_id") and start <= (a.get("created") or "") <= end]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport=VIEWPORT, color_scheme="light")

        def snap(name: str, url: str, text: str | None = None, full: bool = True) -> None:
            if name not in pages:
                return
            page.set_viewport_size(VIEWPORT)
            page.goto(url)
            _settle(page, text)
            if full:
                _fit_height(page)
            shots[name] = out / f"{name}.png"
            page.screenshot(path=str(shots[name]))

        def artifacts_tab(name: str, run_id: str) -> None:
            if name not in pages:
                return
            page.set_viewport_size(VIEWPORT)
            page.goto(f"{ui}/runs/flow-run/{run_id}")
            _settle(page, "Completed")
            page.locator("li.p-tab#artifacts").first.click()  # the run page's Artifacts tab
            _settle(page)
            _fit_height(page)
            shots[name] = out / f"{name}.png"
            page.screenshot(path=str(shots[name]))

        snap("flow-run", f"{ui}/runs/flow-run/{flow_run_id}", "Completed", full=False)
        artifacts_tab("flow-run-artifacts", flow_run_id)
        for key, name, text in (("run-report", "report", "reproduction report"),
                                ("run-metrics", "metrics", "arm"),
                                ("run-artifact-versions", "artifact-versions", "Artifact versions")):
            if key not in own:
                problems.append(f"the parent run has no {key!r} artifact (has {sorted(own)})")
                continue
            if name in pages:
                snap(name, f"{ui}/artifacts/artifact/{own[key]['id']}", text)
                problems += report_page_checks(page) if key == "run-report" else mail_link_problems(page, key)
        if progress:
            bar = pick_progress(progress)
            snap("progress", f"{ui}/artifacts/artifact/{bar['id']}", "Progress")
            artifacts_tab("progress-run", bar["flow_run_id"])
        else:
            problems.append("no progress artifact on any run")
        # The form a user fills in: profile dropdown, overrides mapping, dispatch, each described.
        form = _deployment(api, FULL_REPRODUCTION) if "run-form" in pages else None
        if form is not None:
            snap("run-form", f"{ui}/deployments/deployment/{form['id']}/run", "profile")
        browser.close()
    return shots, problems


def run_reproduction(api: str, store: Path, profile: str) -> str:
    """Run ``reproduce`` (inline GPU stages) against ``api`` in this process; returns the parent
    flow run's id. The environment is set before Prefect is imported."""
    os.environ.update(PREFECT_API_URL=api, DP_STORE_URI=str(store), PREFECT_LOGGING_LEVEL="WARNING")
    sys.path.insert(0, str(REPO))
    import tasks.progress  # noqa: F401  - progress bars on the stage runs
    from flows.reproduce import reproduce

    state = reproduce(profile=profile, store_uri=str(store), dispatch="inline", return_state=True)
    if not state.is_completed():
        raise RuntimeError(f"reproduction ended {state.type.value}: {state.message}")
    return str(state.state_details.flow_run_id)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots", help="where the PNGs go")
    ap.add_argument("--profile", default="toy", help="profile of the reproduction to show (default: toy)")
    ap.add_argument("--api", help="instead: an API URL of a running server with the UI on (with --flow-run)")
    ap.add_argument("--flow-run", help="with --api: the id of a finished reproduce run to show")
    args = ap.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("no chromium found (install Debian's `chromium` or set DP_CHROMIUM)", file=sys.stderr)
        return 2
    if args.api:
        if not args.flow_run:
            ap.error("--api needs --flow-run")
        shots, problems = shoot(args.api.rstrip("/"), args.flow_run, args.out, chromium)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="dp-screens-"))
        try:
            with ui_server(tmp / "prefect") as api:
                t0 = time.monotonic()
                run_id = run_reproduction(api, tmp / "store", args.profile)
                print(f"reproduction ({args.profile}) finished in {time.monotonic() - t0:.0f} s: flow run {run_id}")
                shots, problems = shoot(api, run_id, args.out, chromium)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for name, path in shots.items():
        print(f"{name}: {path}")
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
