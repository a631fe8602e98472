"""``deepperception`` command line: reproduce, inspect artifacts, evaluate."""

from __future__ import annotations

import os
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="DeepPerception pipeline.")
artifacts_app = typer.Typer(no_args_is_help=True, help="List and show artifact versions in the store.")
app.add_typer(artifacts_app, name="artifacts")

StoreOpt = typer.Option(None, "--store", help="Store URI: a directory or s3://bucket/prefix (env DP_STORE_URI).")
EndpointOpt = typer.Option(
    None, "--s3-endpoint", help="S3-compatible endpoint URL (env DP_STORE_S3_ENDPOINT_URL)."
)


def _store(store: Optional[str], s3_endpoint: Optional[str]):
    from deepperception.store import ArtifactStore, StoreSettings

    overrides = {k: v for k, v in (("uri", store), ("s3_endpoint_url", s3_endpoint)) if v}
    return ArtifactStore(StoreSettings(**overrides))


@artifacts_app.command("ls")
def artifacts_ls(
    name: Optional[str] = typer.Argument(None, help="Only this artifact name."),
    store: Optional[str] = StoreOpt,
    s3_endpoint: Optional[str] = EndpointOpt,
) -> None:
    """List committed versions, newest first."""
    s = _store(store, s3_endpoint)
    rows = s.list(name)
    if not rows:
        typer.echo(f"no artifacts in {s.uri}")
        return
    typer.echo(f"{'artifact':44} {'stage':16} {'created':26} upstream")
    for m in rows:
        up = ", ".join(m.upstream.values())
        typer.echo(f"{str(m.ref):44} {m.stage:16} {m.created_at[:26]:26} {up}")


@artifacts_app.command("show")
def artifacts_show(
    ref: str = typer.Argument(..., help="name@version"),
    store: Optional[str] = StoreOpt,
    s3_endpoint: Optional[str] = EndpointOpt,
) -> None:
    """Print a version's manifest (files, schema, config, lineage)."""
    from deepperception.store import ArtifactRef

    s = _store(store, s3_endpoint)
    m = s.manifest(ArtifactRef.parse(ref))
    typer.echo(m.model_dump_json(indent=2))
    typer.echo(f"# location: {s.location(m.ref)}")


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
