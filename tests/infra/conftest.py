"""The local server stack (infra/stack) for tests: the very stack `make up` starts, rooted in a
temporary directory, on free ports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # infra/ is not an installed package; `python -m pytest` has it already
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """Prefect server + UI, SeaweedFS with the bucket, `cpu`/`gpu` pools with one worker each and
    every deployment of prefect.yaml, up for the session; down (and checked down) at the end.

    The workers poll every second (Prefect's default is 10 s) and the kernel stops every service
    if this test process dies without tearing down."""
    from infra.stack import Stack, StackError
    from infra.stack.stack import weed_binary

    try:
        weed_binary()
    except StackError as exc:
        pytest.skip(str(exc))
    stack = Stack(tmp_path_factory.mktemp("dp-stack"), prefect_port=0, s3_port=0, worker_query_seconds=1,
                  tie_to_parent=True)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
