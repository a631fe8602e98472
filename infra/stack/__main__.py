"""``python -m infra.stack up|down|status|env|run|zombies`` (``make up`` / ``make down`` call the first two).

The root is ``.dp-stack/`` in the repository (``DP_STACK_ROOT`` to change); ports come from
``DP_STACK_PREFECT_PORT`` / ``DP_STACK_S3_PORT`` or the root's saved ones (stack.py). argparse,
not typer: this CLI must answer ``status``/``down`` without importing Prefect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from infra.stack import zombies
from infra.stack.stack import REPO_DIR, Stack, StackError, env_file_text


def default_root() -> Path:
    return Path(os.environ.get("DP_STACK_ROOT") or REPO_DIR / ".dp-stack")


def _print_status(stack: Stack) -> bool:
    rows = stack.status()
    for s in rows:
        print(f"{s.name:15} {'running' if s.running else 'stopped':8} {str(s.pid or '-'):>8}  {s.detail}")
    return all(s.running for s in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.stack", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="stack directory (default .dp-stack/)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start what is not running, register the deployments")
    up.add_argument("--no-deploy", action="store_true", help="do not run `prefect deploy --all`")
    up.add_argument("--redeploy", action="store_true", help="deploy even if nothing changed")
    sub.add_parser("down", help="stop every service of the stack (data stays)")
    sub.add_parser("status", help="what runs (exit 1 unless everything does)")
    sub.add_parser("env", help="print `export` lines: eval \"$(python -m infra.stack env)\"")
    run = sub.add_parser("run", help="run a deployment by name and wait (in the stack's environment)")
    run.add_argument("name", help="flow/deployment, e.g. reproduce/full-reproduction")
    run.add_argument("--params", default="{}", help="parameters as a JSON object")
    run.add_argument("--timeout", type=float, default=3600)
    run.add_argument("--json", action="store_true", help="print one JSON line describing the outcome")
    zomb = sub.add_parser("zombies", help="create/update the automation that marks zombie runs Crashed "
                                          "(docs/zombie-runs.md) on this stack's or any Prefect server")
    zomb.add_argument("--api-url", default=None, help="a Prefect API (default: this stack's)")
    zomb.add_argument("--within", type=float, default=zombies.DEFAULT_WITHIN_S,
                      help=f"seconds without a heartbeat before a run is Crashed (default {zombies.DEFAULT_WITHIN_S})")
    zomb.add_argument("--heartbeat", type=int, default=zombies.HEARTBEAT_FREQUENCY_S,
                      help="the workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY (within must exceed it)")
    args = parser.parse_args(argv)
    root = args.root or default_root()

    try:
        stack = Stack(root)
        if args.command == "run":
            return _run(stack, args)
        if args.command == "up":
            did = stack.up(deploy=not args.no_deploy, redeploy=args.redeploy)
            print("stack: " + ("; ".join(did) if did else "already up, nothing to do"))
            _print_status(stack)
            print(f"\nUI: {stack.ui_url}    client env: source {root / 'env'}")
            return 0
        if args.command == "down":
            stopped = stack.down()
            print("stack: " + (f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
                  + f"; data kept in {root}")
            return 0
        if args.command == "status":
            return 0 if _print_status(stack) else 1
        if args.command == "zombies":
            api = args.api_url or stack.api_url
            try:
                did = zombies.ensure_zombie_automation(api, args.within, args.heartbeat)
            except ValueError as exc:
                print(str(exc), file=sys.stderr)
                return 2
            except Exception as exc:  # noqa: BLE001 - server down, refused, wrong URL: say which
                print(f"error: could not apply the zombie automation on {api}: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                return 1
            print(f"zombie automation {zombies.AUTOMATION_NAME!r} on {api}: {did} (within {args.within:g} s)")
            return 0
        if args.command == "env":
            print(env_file_text(stack.env()), end="")
            return 0
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 2


def _run(stack: Stack, args: argparse.Namespace) -> int:
    # This process becomes a client of the stack before Prefect reads its settings.
    os.environ.update(stack.client_env())
    from infra.stack.stack import run_and_wait

    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        print(f"stack run: --params is not JSON: {exc}", file=sys.stderr)
        return 2
    out = run_and_wait(args.name, params, args.timeout)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0 if out["state"] == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
