"""``deepperception artifacts``: list, show and verify artifact versions in the store."""

from __future__ import annotations

from typing import Optional

import typer

artifacts_app = typer.Typer(no_args_is_help=True, help="List, show and verify artifact versions in the store.")

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


