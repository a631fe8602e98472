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
    m = s.manifest(s.resolve(ArtifactRef.parse(ref)))
    typer.echo(m.model_dump_json(indent=2))
    typer.echo(f"# location: {s.location(m.ref)}")



def _targets(s, target: Optional[str]):
    """Refs to verify: all committed versions, all of one name, or one ``name@version``."""
    from deepperception.errors import ArtifactError
    from deepperception.store.refs import ArtifactRef, check_segment

    if target is None:
        return sorted(s.refs(), key=str)
    if "@" in target:
        return [s.resolve(ArtifactRef.parse(target))]
    refs = sorted(s.refs(check_segment(target, "artifact name")), key=str)
    if not refs:
        raise ArtifactError(f"artifact {target} has no committed version in store {s.uri}")
    return refs


@artifacts_app.command("verify")
def artifacts_verify(
    target: Optional[str] = typer.Argument(None, help="NAME or NAME@VERSION (default: every committed version)."),
    store: Optional[str] = StoreOpt,
    s3_endpoint: Optional[str] = EndpointOpt,
    quick: bool = typer.Option(False, "--quick", help="Only check that files exist with their sizes (no re-hash)."),
) -> None:
    """Re-hash committed files against their manifests; exit 2 if any version is corrupt."""
    s = _store(store, s3_endpoint)
    corrupt = []
    targets = _targets(s, target)
    if not targets:
        typer.echo(f"no artifacts in {s.uri}")
    for ref in targets:
        problems = s.verify(ref, deep=not quick)
        if problems:
            corrupt.append(str(ref))
            typer.echo(f"CORRUPT {ref}: {'; '.join(problems)}")
        else:
            typer.echo(f"ok {ref} ({len(s.manifest(ref).files)} files)")
    if corrupt:
        # Printed here (not raised) so that the exit status is 2 whichever entry point runs it.
        typer.echo(f"error: {len(corrupt)} corrupt version(s) in {s.uri}: {', '.join(corrupt)}", err=True)
        raise typer.Exit(2)


@artifacts_app.command("files")
def artifacts_files(
    ref: str = typer.Argument(..., help="name@version or name@latest"),
    table: str = typer.Option("data", "--table", help="Which table of the version (data, rejected, ...)."),
    store: Optional[str] = StoreOpt,
    s3_endpoint: Optional[str] = EndpointOpt,
) -> None:
    """Print where each Parquet part of a table is, one per line, for any Parquet reader
    (DuckDB: ``read_parquet([...])``, pandas, ``datasets.load_dataset("parquet", data_files=...)``)."""
    from deepperception.store import ArtifactRef

    s = _store(store, s3_endpoint)
    for location in s.table_locations(s.resolve(ArtifactRef.parse(ref)), table):
        typer.echo(location)
