"""The automation that marks zombie flow runs Crashed (docs/zombie-runs.md).

A flow run whose worker and flow-run process die together (a node lost, a pre-empted VM, a
SIGKILLed process group) stays ``Running`` on the Prefect server forever: nothing is left to report
its end. Prefect 3's answer: every flow run of a deployment emits a ``prefect.flow-run.heartbeat``
event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (>= 30; the stack's workers get
:data:`HEARTBEAT_FREQUENCY_S`), and a *proactive* automation expects, for each flow run, another
heartbeat (or a terminal state) within ``within`` seconds of the last one; when none comes it sets
the run ``Crashed``.

``ensure_zombie_automation(api_url)`` creates the automation, or updates it to this definition when
one of that name exists (idempotent: the stack's ``up`` calls it every time).
``python -m infra.stack zombies --api-url URL [--within S]`` applies it to any Prefect server.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

AUTOMATION_NAME = "deepperception: crash zombie flow runs"
HEARTBEAT_FREQUENCY_S = 30
"""The workers' ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (Prefect's minimum is 30 s)."""
DEFAULT_WITHIN_S = 90
"""Three missed heartbeats: long enough that a busy (GIL-bound) flow-run process or a slow event
delivery is not taken for dead, short enough that a lost run is Crashed within two minutes."""
TERMINAL_EVENTS = ("prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                   "prefect.flow-run.Crashed")


def zombie_automation(within_s: float = DEFAULT_WITHIN_S, heartbeat_s: int = HEARTBEAT_FREQUENCY_S) -> Any:
    """The automation's definition (an ``AutomationCore``). ``within_s`` must exceed the heartbeat
    period, or live runs between two heartbeats would be crashed."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if within_s <= heartbeat_s:
        raise ValueError(f"error: within={within_s} s must be longer than the heartbeat period {heartbeat_s} s "
                         "(PREFECT_FLOWS_HEARTBEAT_FREQUENCY), or running flows would be marked Crashed")
    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(f"Marks a flow run Crashed when it sent no heartbeat for {within_s:g} s (its worker and "
                     f"process died; workers send one every {heartbeat_s} s). Managed by infra/stack/zombies.py."),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *TERMINAL_EVENTS},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"Flow run marked Crashed: no heartbeat for {within_s:g} s (its worker or node was lost).",
        )],
    )


def ensure_zombie_automation(api_url: str, within_s: float = DEFAULT_WITHIN_S,
                             heartbeat_s: int = HEARTBEAT_FREQUENCY_S) -> str:
    """Create or update the automation on the server at ``api_url``; returns what it did
    (``created``, ``updated`` or ``unchanged``). Extra automations of the same name are removed."""
    from prefect.client.orchestration import SyncPrefectClient

    want = zombie_automation(within_s, heartbeat_s)
    with SyncPrefectClient(api=api_url) as client:
        have = client.read_automations_by_name(AUTOMATION_NAME)
        if not have:
            client.create_automation(want)
            return "created"
        first, *extra = have
        for dup in extra:
            client.delete_automation(dup.id)
        fields = ("name", "description", "enabled", "trigger", "actions")
        same = all(_dump(getattr(first, f)) == _dump(getattr(want, f)) for f in fields)
        if same and not first.actions_on_trigger and not first.actions_on_resolve and not extra:
            return "unchanged"
        client.update_automation(first.id, want)
        return "updated"


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if hasattr(value, "model_dump"):
        data = value.model_dump(mode="json", exclude={"id"})
        return {k: sorted(v) if isinstance(v, list) and k in ("after", "expect", "for_each") else v
                for k, v in data.items()}
    return value
