"""The labeler and teacher endpoints answering 429, 500, timeouts and garbage (issue 11, item 2), and huge bodies.

The real labeling stage (``label_boxes_task``, backend ``openai``) and the real distillation stage
(``distill_cot_task``, teacher backend ``openai``) each run against the repo's real HTTP fake server. ``fault_rng`` picks, per fault kind, which requests fail and how many times:
a transient fault fails an item at most ``max_retries`` times (it must be retried with backoff
and succeed), a persistent one outlasts the retries (within ``max_failure_rate`` the stage
commits a partial version recording the item's reason code; the rerun asks again only for that
item and completes). The final version is
compared row by row with a clean run's in a second store.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import re

from deepperception.config import DistillationStageConfig, LabelingStageConfig, ShardingConfig, profile
from deepperception.engine.composition import CompositionConfig
from deepperception.engine.distillation import DistillConfig
from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.serving.endpoint import EndpointConfig
from deepperception.store import ArtifactStore, StoreSettings
from tasks.engine import collect_images_task, compose_task, distill_cot_task, label_boxes_task, mine_entities_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from fake_openai_server import FakeOpenAIServer, Raw  # noqa: E402

RETRIES = 2
TIMEOUT_S = 0.6
RUNNER = ShardRunnerConfig(kind="threads", max_workers=2)
OK = "<|object_ref_start|>it<|object_ref_end|><|box_start|>(100,120),(880,900)<|box_end|>"
_GOOD = b'{"choices": [{"message": {"content": "(1,2),(3,4)"}}]}'

FAULTS = {  # kind -> (the reply, the client's reason code)
    "429": (lambda: Raw(429, b'{"error": "slow down"}', {"Retry-After": "0.02"}), "http_429"),
    "500": (lambda: 500, "http_5xx"),
    "timeout": (lambda: Raw(200, _GOOD, delay_s=TIMEOUT_S + 0.4), "timeout"),
    "not_json": (lambda: Raw(200, b"internal error, please retry"), "malformed_json"),
    "truncated": (lambda: Raw(200, b'{"choices": [{"message": {"content": "(1,2),(3'), "malformed_json"),
    "html_502": (lambda: Raw(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                             {"Content-Type": "text/html"}), "http_5xx"),
    "wrong_shape": (lambda: Raw(200, b'{"choices": "none today"}'), "malformed_json"),
    "cut_mid_body": (lambda: Raw(200, _GOOD, cut_at=20), "connection"),
}


def _endpoint(base_url: str, model: str, **kw) -> EndpointConfig:
    return EndpointConfig(base_url=base_url, model=model, concurrency=4, max_retries=RETRIES, timeout_s=TIMEOUT_S,
                          backoff_base_s=0.01, backoff_max_s=0.05, **kw)


def _config(base_url: str, **kw) -> LabelingStageConfig:
    return LabelingStageConfig(backend="openai", endpoint=_endpoint(base_url, "vl", **kw))


def _teacher(base_url: str) -> DistillationStageConfig:
    return DistillationStageConfig(backend="openai", endpoint=_endpoint(base_url, "teacher"),
                                   options=DistillConfig(concurrency=4),
                                   max_failure_rate=0.1)  # the one doomed item of ~12 stays within budget


def _images(uri: str):
    cfg = profile("toy")
    entities = mine_entities_task.fn(cfg.data, uri)
    return collect_images_task.fn(cfg.data, cfg.collection, entities, uri, False, ShardingConfig(images_per_shard=3))


def _composites(uri: str):
    cfg = profile("toy")
    entities = mine_entities_task.fn(cfg.data, uri)
    images = collect_images_task.fn(cfg.data, cfg.collection, entities, uri, False, ShardingConfig(images_per_shard=3))
    labeled = label_boxes_task.fn(LabelingStageConfig(), images, uri, False, RUNNER)
    comps = compose_task.fn(CompositionConfig(pool="train", composites_per_category=6, tile_size=48), labeled, uri,
                            False, ShardingConfig(composites_per_shard=3), RUNNER)
    return comps, entities


TEACHER_PROMPT = re.compile(r"The bounding box of (.+?) is (\(\d+,\d+\),\(\d+,\d+\))\. Give the reasoning")


def _teacher_ok(text: str) -> str:
    m = TEACHER_PROMPT.search(text)
    name, box = m.groups() if m else ("it", "(0,0),(1,1)")
    return (f"Planning: look for the {name}.\n\nVisual analysis:\n- shapes and colours.\n\n"
            f"Comparison: compare.\n\nConclusion: the {name} is at {box}.")


# What differs between the two model stages under test: how a run is made, the id and attempts columns,
# and a good reply.
STAGES = {
    "labeler": dict(prepare=_images, run=lambda url, inputs, uri: label_boxes_task.fn(_config(url), inputs, uri,
                                                                                       False, RUNNER),
                    id="image_id", attempts="label_attempts", ok=lambda text: OK),
    "teacher": dict(prepare=_composites, run=lambda url, inputs, uri: distill_cot_task.fn(
        _teacher(url), inputs[0], inputs[1], uri, False, RUNNER), id="question_id", attempts="attempts",
        ok=_teacher_ok),
}


def _key(image, text) -> str:
    return text + "|" + hashlib.sha256(image.tobytes()).hexdigest()[:16]


class Script:
    """Per item key: a list of replies to give before answering ``OK`` (popped one per request)."""

    def __init__(self, ok=lambda text: OK) -> None:
        self.ok = ok
        self.plan: dict[str, list] = {}
        self.asked: Counter[str] = Counter()

    def __call__(self, image, text, req):
        key = _key(image, text)
        self.asked[key] += 1
        todo = self.plan.get(key)
        return todo.pop(0) if todo else self.ok(text)


def _rows(store, ref, attempts: str) -> list[dict]:
    """The rows without the attempts column (the HTTP attempts an item took: the faults' only honest difference)."""
    return [{k: v for k, v in r.items() if k != attempts} for r in store.read_table(ref).to_pylist()]


def _compare(store, ref, clean_store, clean, id_col: str, attempts: str) -> tuple[int, int, int]:
    got = _rows(store, ref, attempts)
    want = {r[id_col]: r for r in _rows(clean_store, clean, attempts)}
    ids = Counter(r[id_col] for r in got)
    lost = len(set(want) - set(ids))
    duplicated = sum(c - 1 for c in ids.values())
    corrupted = sum(1 for r in got if r != want.get(r[id_col])) + len(store.verify(ref))
    return lost, duplicated, corrupted


@pytest.mark.fault("edge.endpoint_faults")
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_endpoint_faults_are_retried_or_failed_with_reasons_and_the_rerun_completes(
        tmp_path, fault_rng, reliability, stage):
    spec = STAGES[stage]
    uri, clean_uri = str(tmp_path / "faulty"), str(tmp_path / "clean")
    images = spec["prepare"](uri)
    shutil.copytree(uri, clean_uri)
    store, clean_store = ArtifactStore(StoreSettings(uri=uri)), ArtifactStore(StoreSettings(uri=clean_uri))
    script = Script(spec["ok"])
    with FakeOpenAIServer(script) as server:
        clean = spec["run"](server.base_url, images, clean_uri)
        keys = sorted(script.asked)
        n = len(keys)
        assert n >= 8, f"only {n} items: too few for the fault kinds"
        # every fault kind hits a random item transiently (1..RETRIES times); one kind outlasts the retries
        chosen = fault_rng.sample(keys, len(FAULTS) + 1)
        persistent_kind = fault_rng.choice(sorted(FAULTS))
        transient: dict[str, str] = {}
        for key, kind in zip(chosen, sorted(FAULTS)):
            times = fault_rng.randint(1, RETRIES)
            script.plan[key] = [FAULTS[kind][0]() for _ in range(times)]
            transient[key] = (kind, times)
        doomed = chosen[-1]
        script.plan[doomed] = [FAULTS[persistent_kind][0]() for _ in range(RETRIES + 1)]
        injected = sum(len(v) for v in script.plan.values())
        script.asked.clear()
        t0 = time.monotonic()
        partial = spec["run"](server.base_url, images, uri)
        first_s = time.monotonic() - t0
        asked_first = Counter(script.asked)
        script.asked.clear()
        t1 = time.monotonic()
        ref = spec["run"](server.base_url, images, uri)
        recover_s = time.monotonic() - t1
        asked_rerun = Counter(script.asked)
        problems = list(server.problems)
    lost, duplicated, corrupted = _compare(store, ref, clean_store, clean, spec["id"], spec["attempts"])
    failures = store.manifest(ref).metadata["failures"]
    reliability.record(lost=lost, duplicated=duplicated, corrupted=corrupted, recover_s=recover_s, injected=injected,
                       detail=f"{stage}: {len(transient)} items with transient faults, 1 ({persistent_kind}) outlasting "
                              f"{RETRIES} retries of {n} items; rerun asked {sum(asked_rerun.values())} request(s)")
    assert problems == []
    reason = FAULTS[persistent_kind][1]
    meta = store.manifest(partial).metadata
    assert meta["failures"]["failed"] == 1, meta["failures"]
    usage = meta["usage"]  # the client's meter: failures by reason code, requests and retries
    assert usage["failures"] == {reason: 1}, f"the partial version does not record reason {reason!r}: {usage}"
    assert usage["retries"] == sum(t for _, t in transient.values()) + RETRIES, usage
    assert usage["requests"] == sum(asked_first.values()) == n + usage["retries"], usage
    for key, (kind, times) in transient.items():  # retried with backoff and answered in the first run
        assert asked_first[key] == times + 1, f"{kind} x{times}: asked {asked_first[key]} times"
    assert asked_first[doomed] == RETRIES + 1, "the persistent fault was not retried exactly max_retries times"
    assert all(asked_first[k] == 1 for k in keys if k not in transient and k != doomed)
    # the partial version's good rows are kept: the rerun asks for the failed item only
    assert asked_rerun == Counter({doomed: 1}), asked_rerun
    assert first_s < 30, f"the faulty run took {first_s:.1f} s: timeouts not honoured"
    assert failures["failed"] == 0, failures
    attempts = sum(store.read_table(ref).column(spec["attempts"]).to_pylist())
    assert attempts == n + sum(t for _, t in transient.values()), f"{spec['attempts']} sum to {attempts}"
    assert (lost, duplicated, corrupted) == (0, 0, 0)


@pytest.mark.fault("fuzz.oversized_outputs")
def test_a_huge_reply_body_is_cut_off_with_a_reason_code_in_bounded_time(tmp_path, fault_rng, reliability):
    """A server answering with a multi-MiB content string (or endless garbage) is read only up to
    ``max_response_bytes``: the item fails with ``oversized_reply`` (not retried) and nothing crashes."""
    from deepperception.serving.client import ChatClient, ChatRequest

    cap = 64 * 1024
    size = fault_rng.randint(4, 32) * 1024 * 1024
    huge_content = b'{"choices": [{"message": {"content": "' + b"A" * size + b'"}}]}'
    replies = {"content": Raw(200, huge_content), "garbage": Raw(200, b"\x00" * size), "error": Raw(500, b"E" * size)}
    order = fault_rng.sample(sorted(replies), len(replies))
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "PNG")
    png = buf.getvalue()
    with FakeOpenAIServer(lambda img, text, req: replies[text] if text in replies else OK) as server:
        endpoint = EndpointConfig(base_url=server.base_url, model="vl", max_retries=2, timeout_s=5,
                                  backoff_base_s=0.01, backoff_max_s=0.05, max_response_bytes=cap)
        t0 = time.monotonic()
        with ChatClient(endpoint) as client:
            results = list(client.run([ChatRequest(k, k, [png]) for k in order + ["fine"]]))
        took = time.monotonic() - t0
        calls = Counter(c.text for c in server.calls)
    bad = [r for r in results if r.key != "fine" and (r.reason != "oversized_reply" or r.attempts != 1 or r.text)]
    reliability.record(lost=len(order) + 1 - len(results), duplicated=sum(c - 1 for c in calls.values()),
                       corrupted=len(bad), recover_s=took, injected=len(order),
                       detail=f"{size >> 20} MiB bodies ({', '.join(order)}) against a {cap >> 10} KiB cap")
    assert bad == [], bad
    assert results[-1].ok and results[-1].key == "fine"
    assert all(f"max_response_bytes ({cap} bytes)" in r.error for r in results[:-1])
    assert took < 10, f"{took:.1f} s for {size >> 20} MiB replies"
    assert [r.key for r in results] == order + ["fine"]
