"""``deepperception data``: look at a dataset source before collecting from it.

Mounted on the top-level app (an ``ErrorHandlingGroup``), so bad input raised here
(``InputDataError``, ``ConfigError``) becomes one ``error: ...`` line and exit 2.
"""

from __future__ import annotations

import json
from typing import List, Optional

import typer

data_app = typer.Typer(no_args_is_help=True, help="Inspect dataset sources in their published layouts.")


@data_app.callback()
def _data() -> None:
    """Inspect dataset sources in their published layouts."""


@data_app.command("inspect")
def data_inspect(
    source: str = typer.Option(..., "--source", help="fgvc-aircraft, stanford-cars, inat2017, food101 or image-folder."),
    root: str = typer.Option(..., "--root", help="Dataset root: a directory or s3://bucket/prefix."),
    split: str = typer.Option("all", "--split", help="train, test or all (the dataset's own splits)."),
    supercategory: Optional[List[str]] = typer.Option(
        None, "--supercategory", help="Keep only this supercategory (inat2017; repeatable, e.g. Reptilia, Aves)."),
    category: Optional[str] = typer.Option(
        None, "--category", help="image-folder only: the bench category, so the hash split equals collection's."),
    test_fraction: Optional[float] = typer.Option(
        None, "--test-fraction", help="image-folder only: share of photos hashed into test (default 0.25)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="image-folder only: seed of the split hash (default 0)."),
) -> None:
    """Print ONE JSON object: source, split, entities, images, images_with_box, missing, per_entity."""
    from deepperception.sources.inspect import inspect_source

    # image-folder has no split metadata; its hash split takes these (any other source refuses them).
    opts = {k: v for k, v in (("category", category), ("test_fraction", test_fraction), ("seed", seed))
            if v is not None}
    report = inspect_source(source, root, split=split, supercategories=supercategory or None, **opts)
    typer.echo(json.dumps(report, ensure_ascii=False))


def _standalone() -> typer.Typer:
    """``python -m deepperception.sources.cli``: the group under the package's error handler."""
    from deepperception.cli_errors import ErrorHandlingGroup

    app = typer.Typer(cls=ErrorHandlingGroup, add_completion=False, no_args_is_help=True)
    app.add_typer(data_app, name="data")
    return app


if __name__ == "__main__":
    _standalone()(prog_name="deepperception")
