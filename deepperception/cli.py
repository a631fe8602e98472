"""``deepperception`` command line: reproduce, inspect artifacts, evaluate.

Errors: every command goes through one handler (:mod:`deepperception.cli_errors`). Bad input
(a config value, a file, a row, an artifact ref) prints ``error: <what>, <where>`` on stderr and
exits 2; an unexpected internal error prints ``error: internal error: ...`` and exits 1;
``deepperception --debug ...`` (or ``DP_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import os
from typing import Optional

import typer

from deepperception.cli_errors import ErrorHandlingGroup, debug_enabled, hide_console_tracebacks
from deepperception.sources.cli import data_app
from deepperception.store.cli import EndpointOpt, StoreOpt, artifacts_app

app = typer.Typer(
    cls=ErrorHandlingGroup, add_completion=False, no_args_is_help=True,
    help="DeepPerception pipeline.\n\nExit codes: 0 ok; 2 bad input or usage (`error: <what>, <where>` on stderr); "
         "1 internal error (a bug: rerun with --debug for the traceback).",
)
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(data_app, name="data")

REPAIR_ENV = "DP_STORE_REPAIR"


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", envvar="DP_DEBUG",
                               help="Print the full traceback of an error (env DP_DEBUG=1)."),
) -> None:
    """DeepPerception pipeline."""
    if debug:  # also for code that has no click context (library logging, worker subprocesses)
        os.environ["DP_DEBUG"] = "1"


def _announce_server(info) -> None:
    if info.pid is None:
        typer.echo(f"prefect: using PREFECT_API_URL={info.api_url}", err=True)
    else:
        typer.echo(f"prefect: started a local server for this run at {info.api_url} (pid {info.pid}, log {info.log}); "
                   "set PREFECT_API_URL to use your own", err=True)


@app.command()
def reproduce(
    profile: str = typer.Option("demo", help="Profile: a shipped name (`deepperception profiles` lists them) or the "
                                "path of your own YAML profile file (it may `extends:` a shipped one)."),
    store: Optional[str] = StoreOpt,
    s3_endpoint: Optional[str] = EndpointOpt,
    force: list[str] = typer.Option([], "--force", help="Recompute this stage (and what depends on it); repeatable."),
    config_file: Optional[str] = typer.Option(None, "--config", help="JSON/YAML file of overrides, deep-merged onto "
                                              "the profile."),
    assignments: list[str] = typer.Option([], "--set", metavar="KEY.PATH=VALUE", help="Override one setting, the "
                                          "value read as YAML (e.g. --set grpo.beta=0.02 --set comparison.direct_sft="
                                          "true); repeatable, applied after --config."),
    repair: bool = typer.Option(False, "--repair", help="recompute a reused version whose files fail verification"),
    run_flow: bool = typer.Option(False, "--run-flow", help="Run the Prefect flow even when a run record shows "
                                  "that every version of this exact run is committed and intact."),
) -> None:
    """Run the full reproduction flow (data engine -> SFT -> RL filter -> GRPO -> eval -> report).

    Settings: the profile, then --config, then each --set, deep-merged in that order and
    validated in full before anything runs.

    Without PREFECT_API_URL a local Prefect server is started for the run and stopped with it
    (killed by the kernel even if this process is SIGKILLed); with it, that server is used.

    An unchanged rerun (same resolved settings, source tree and store, no --force/--repair) is
    answered from the run record the last successful run wrote, after checking every version it
    names as a stage would before reusing it: no Prefect server and no flow run, so seconds instead
    of a minute or more (benchmarks/bench_orchestration.py; deepperception/plan.py says why it is
    safe). --run-flow runs the flow anyway.
    """
    # Validate everything before any side effect: a bad value must never commit an artifact.
    from deepperception.config import _deep_merge, load_config, parse_set, read_overrides

    cfg = load_config(profile, config_file, assignments)
    overrides = _deep_merge(read_overrides(config_file) if config_file else {}, parse_set(assignments))
    # The endpoint travels in the environment (tasks, and workers, build their clients from it);
    # the store URI is a flow parameter, visible in the Prefect UI.
    if s3_endpoint:
        os.environ["DP_STORE_S3_ENDPOINT_URL"] = s3_endpoint
    if repair:
        os.environ[REPAIR_ENV] = "1"
    from deepperception import plan
    from deepperception.store import ArtifactStore

    artifact_store = ArtifactStore.from_uri(store)
    asked = force or repair or run_flow or artifact_store.settings.repair  # repair: also DP_STORE_REPAIR=1
    done = None if asked else plan.committed_run(cfg, artifact_store)
    if done is not None:
        typer.echo(f"nothing to run: every version of this run is committed and intact (run record {done.key}, "
                   f"written {done.record.get('created_at', '?')}; checked {len(plan.result_refs(done.result))} "
                   "versions); no flow run was started (--run-flow to run it anyway)", err=True)
        _echo_result(done.result)
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from deepperception.prefect_server import prefect_api

    with prefect_api() as info:
        _announce_server(info)
        from flows.reproduce import reproduce as reproduce_flow

        if not debug_enabled():
            hide_console_tracebacks()  # a failed stage ends in our one `error:` line instead
        from deepperception.config import shipped_profiles

        # The flow's `profile` is the UI's dropdown of shipped names; a file goes as `profile_file`.
        which = {"profile": profile} if profile in shipped_profiles() else {"profile_file": profile}
        result = reproduce_flow(**which, overrides=overrides or None, store_uri=store, force_stages=list(force))
    plan.write_record(artifact_store, cfg, result)
    _echo_result(result)


def _echo_result(result: dict) -> None:
    typer.echo("")
    typer.echo(f"report (markdown): {result['report_markdown']}")
    typer.echo(f"report (json):     {result['report_json']}")
    typer.echo(f"report artifact:   {result['report']}")


profiles_app = typer.Typer(cls=ErrorHandlingGroup, no_args_is_help=False, invoke_without_command=True,
                           help="The shipped profiles (deepperception/profiles/*.yaml).")
app.add_typer(profiles_app, name="profiles")


@profiles_app.callback()
def _profiles(ctx: typer.Context) -> None:
    """List the shipped profiles with their one-line descriptions (`profiles show NAME` prints one)."""
    if ctx.invoked_subcommand is not None:
        return
    from deepperception.config import profile_chain, profile_description, shipped_profiles

    names = list(shipped_profiles())
    width = max(map(len, names))
    for name in names:
        chain = [n for n, *_ in profile_chain(name)]
        parent = f" (extends {chain[-2]})" if len(chain) > 1 else ""
        typer.echo(f"{name:<{width}}  {profile_description(name)}{parent}")
    typer.echo("\nshow one fully resolved: deepperception profiles show NAME; run: deepperception reproduce "
               "--profile NAME [--config FILE] [--set key.path=value ...]")


@profiles_app.command("show")
def profiles_show(
    name: str = typer.Argument(..., help="A shipped profile name or the path of a YAML profile file."),
    config_file: Optional[str] = typer.Option(None, "--config", help="JSON/YAML overrides to apply first."),
    assignments: list[str] = typer.Option([], "--set", metavar="KEY.PATH=VALUE", help="Overrides, as for reproduce."),
) -> None:
    """Print the fully resolved config of a profile (with any overrides) as YAML: every field,
    defaults included, exactly what `reproduce` would run."""
    import yaml

    from deepperception.config import load_config, profile_chain

    cfg = load_config(name, config_file, assignments)
    chain = " -> ".join(["field defaults", *(str(n) for n, *_ in profile_chain(name))])
    typer.echo(f"# {cfg.profile}: {chain}" + (f" + {config_file}" if config_file else "")
               + (" + --set" if assignments else ""))
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, width=120).rstrip())


@app.command("prefect-check", hidden=True)
def prefect_check(
    hold: float = typer.Option(0.0, "--hold", help="Seconds to keep the server after the flow ran."),
    fail: bool = typer.Option(False, "--fail", help="Make the flow raise bad-input error (tests the error path)."),
) -> None:
    """Internal: bring up the Prefect API exactly like `reproduce`, run a trivial flow, optionally wait.

    Used by the tests (SIGKILL during --hold must take the server down too) and handy to check
    a machine: it prints the API URL and `flow ok`.
    """
    import time

    from deepperception.prefect_server import prefect_api

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_api() as info:
        _announce_server(info)
        from prefect import flow

        if not debug_enabled():
            hide_console_tracebacks()

        @flow(name="dp-prefect-check")
        def _check() -> int:
            if fail:
                from deepperception.errors import InputDataError

                raise InputDataError("requested failure", stage="prefect-check", row=7)
            return 42

        assert _check() == 42
        typer.echo(f"api {info.api_url}")
        typer.echo("flow ok", err=False)
        if hold:
            time.sleep(hold)


def _mount_eval() -> None:
    from deepperception.eval import fgvr_cli, run_cli  # noqa: F401  (register `eval run`, `eval fgvr-*`)
    from deepperception.eval.cli import eval_app

    app.add_typer(eval_app, name="eval", help="Score, compare and run KVG-Bench evaluations.")


_mount_eval()


def main() -> None:  # console-script entry point
    # All error handling lives in ErrorHandlingGroup, shared with in-process callers of `app`.
    app(prog_name="deepperception")


if __name__ == "__main__":
    main()
