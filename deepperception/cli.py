"""``deepperception`` command line: reproduce, inspect artifacts, evaluate."""

from __future__ import annotations

import os
from typing import Optional

import typer

from deepperception.store.cli import EndpointOpt, StoreOpt, artifacts_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="DeepPerception pipeline.")
app.add_typer(artifacts_app, name="artifacts")


@app.command()
def reproduce(
    profile: str = typer.Option("demo", help="Config profile: toy, demo or paper."),
    store: Optional[str] = StoreOpt,
    s3_endpoint: Optional[str] = EndpointOpt,
    force: list[str] = typer.Option([], "--force", help="Recompute this stage (and what depends on it); repeatable."),
    config_file: Optional[str] = typer.Option(None, "--config", help="JSON/YAML file overriding the profile."),
) -> None:
    """Run the full reproduction flow (data engine -> SFT -> RL filter -> GRPO -> eval -> report)."""
    # The endpoint travels in the environment (tasks, and workers, build their clients from it);
    # the store URI is a flow parameter, visible in the Prefect UI.
    if s3_endpoint:
        os.environ["DP_STORE_S3_ENDPOINT_URL"] = s3_endpoint
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from deepperception.config import load_config
    from flows.reproduce import reproduce as reproduce_flow

    cfg = load_config(profile, config_file)
    result = reproduce_flow(config=cfg, store_uri=store, force_stages=list(force))
    typer.echo("")
    typer.echo(f"report (markdown): {result['report_markdown']}")
    typer.echo(f"report (json):     {result['report_json']}")
    typer.echo(f"report artifact:   {result['report']}")


def _mount_eval() -> None:
    from deepperception.eval import fgvr_cli, run_cli  # noqa: F401  (register `eval run`, `eval fgvr-*`)
    from deepperception.eval.cli import eval_app

    app.add_typer(eval_app, name="eval", help="Score, compare and run KVG-Bench evaluations.")


_mount_eval()


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
