"""The SFT run log under Prefect's ``log_prints`` carries the trainer's loss lines and no
bytecode disassembly (``datasets`` fingerprints with dill, which captures ``dis.dis`` output
from a redirected stdout; Prefect's patched ``print`` used to send it to the run log)."""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Iterator


DUMP = re.compile(r"\b(RESUME|LOAD_GLOBAL|LOAD_FAST|RETURN_VALUE|PRECALL)\b")


class _RunLog(logging.Handler):
    """The records Prefect's run loggers emit (what its API handler sends to the run log), by task."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_task: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        task = (getattr(record, "task_run_name", None) or "flow").split("-")[0]
        self.by_task.setdefault(task, []).append(record.getMessage())


@contextmanager
def run_log() -> Iterator[dict[str, list[str]]]:
    """A handler on Prefect's task-run logger, at INFO, for the block (the tests' environment sets
    Prefect's loggers to WARNING, and ``print_as_log`` logs at INFO). Entered after the imports:
    importing a library may reconfigure logging."""
    handler = _RunLog()
    names = ("prefect", "prefect.task_runs", "prefect.flow_runs")
    old = {n: (logging.getLogger(n).level, logging.getLogger(n).disabled) for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.INFO)
        logging.getLogger(n).disabled = False
    logging.getLogger("prefect.task_runs").addHandler(handler)
    try:
        yield handler.by_task
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(handler)
        for n, (level, disabled) in old.items():
            logging.getLogger(n).setLevel(level)
            logging.getLogger(n).disabled = disabled


def test_an_sft_run_log_has_the_loss_lines_and_no_disassembly(prefect_harness, tiny_ckpt, tmp_path):
    from datasets import Dataset
    from prefect import flow, task

    from deepperception.config import profile
    from deepperception.model.synthetic import synthetic_sft_rows
    from deepperception.training.sft import train_sft

    @task
    def bare():  # the mechanism, unguarded: proves the check below can fail
        Dataset.from_dict({"a": [1, 2]})

    @task
    def sft():
        return train_sft(synthetic_sft_rows(4), tiny_ckpt, tmp_path / "out", profile("toy").sft).metrics["steps"]

    @flow(log_prints=True)
    def run():
        bare()
        return sft()

    with run_log() as logs:
        state = run(return_state=True)
    assert state.result() == 2
    assert any(DUMP.search(m) for m in logs.get("bare", [])), (sorted(logs), "Prefect no longer logs dill's disassembly: drop trl_data's guard?")
    assert [m for m in logs["sft"] if "'loss'" in m], logs["sft"]  # the trainer's prints still reach the run log
    assert not [m for m in logs["sft"] if DUMP.search(m)]
