"""ChatClient against the fault-injecting loopback server: retries, reasons, attempts, no lost
item, concurrency bound, rate limit, usage and cost."""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest
from PIL import Image

from fault_server import Fault, FaultServer, usage_for

from deepperception.serving import ChatClient, ChatRequest, EndpointConfig
from deepperception.serving.client import RateLimiter


def endpoint(server: FaultServer | None = None, **kw) -> EndpointConfig:
    base = dict(base_url=server.base_url if server else "http://127.0.0.1:9/v1", model="m", timeout_s=2.0,
                max_retries=3, concurrency=4, backoff_base_s=0.01, backoff_max_s=0.05)
    base.update(kw)
    return EndpointConfig(**base)


def png(color=(10, 20, 30)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(b, "PNG")
    return b.getvalue()


def run_all(client: ChatClient, texts: list[str], **kw) -> list:
    return list(client.run(ChatRequest(key=t, text=t, **kw) for t in texts))


# (fault, final reason when it never clears, retried?)
FAULTS = [
    (Fault.http(429), "http_429", True),
    (Fault.http(500), "http_5xx", True),
    (Fault.http(503), "http_5xx", True),
    (Fault.malformed(), "malformed_json", True),
    (Fault.disconnect(), "connection", True),
    (Fault.http(400), "http_4xx", False),
    (Fault.http(404), "http_4xx", False),
    (Fault.empty_choices(), "empty_choices", False),
    (Fault.missing_content(), "missing_field", False),
]


@pytest.mark.parametrize("fault,reason,retried", FAULTS, ids=[f[1] + "-" + str(f[0].status) for f in FAULTS])
def test_each_fault_kind_is_retried_or_final(fault, reason, retried):
    plan = {"transient": [fault, fault], "permanent": [fault] * 10}
    with FaultServer(plan=plan) as server, ChatClient(endpoint(server, max_retries=3)) as client:
        transient, permanent, fine = run_all(client, ["transient", "permanent", "fine"])
    if retried:
        assert transient.ok and transient.attempts == 3 and transient.text
        assert (permanent.reason, permanent.attempts) == (reason, 4)
        assert server.attempts["permanent"] == 4
    else:
        assert (transient.reason, transient.attempts) == (reason, 1)
        assert (permanent.reason, permanent.attempts) == (reason, 1)
        assert server.attempts["permanent"] == 1
    assert permanent.text is None and permanent.error
    assert fine.ok and fine.attempts == 1 and fine.reason is None
    md = client.meter.to_metadata()
    assert md["items"] == 3 and md["failures"][reason] == (1 if retried else 2)
    assert md["requests"] == sum(server.attempts.values())
    assert md["retries"] == md["requests"] - md["items"]


def test_hang_past_timeout_is_a_retried_timeout():
    plan = {"slow": [Fault.hang(3.0)], "dead": [Fault.hang(3.0)] * 3}
    with FaultServer(plan=plan) as server, ChatClient(endpoint(server, timeout_s=0.3, max_retries=1)) as client:
        slow, dead = run_all(client, ["slow", "dead"])
    assert slow.ok and slow.attempts == 2
    assert (dead.reason, dead.attempts) == ("timeout", 2) and "0.3 s" in dead.error


def test_connection_refused_is_connection_reason():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = endpoint(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    with ChatClient(cfg) as client:
        (r,) = run_all(client, ["x"])
    assert (r.reason, r.attempts) == ("connection", 3) and f"127.0.0.1:{port}" in r.error


def test_retry_after_is_honoured():
    plan = {"a": [Fault.http(429, retry_after="0.4")]}
    with FaultServer(plan=plan) as server, ChatClient(endpoint(server, backoff_max_s=5.0)) as client:
        (r,) = run_all(client, ["a"])
    first, second = [a.t for a in server.arrivals]
    assert r.ok and r.attempts == 2
    assert second - first >= 0.38  # jittered backoff alone would be <= 0.01 s here


def test_retry_after_is_capped_by_backoff_max():
    plan = {"a": [Fault.http(503, retry_after="30")]}
    with FaultServer(plan=plan) as server, ChatClient(endpoint(server, backoff_max_s=0.2)) as client:
        t0 = time.monotonic()
        (r,) = run_all(client, ["a"])
    assert r.ok and time.monotonic() - t0 < 2.0


def test_many_faults_zero_items_lost_and_order_kept():
    kinds = [Fault.http(429), Fault.http(500), Fault.malformed(), Fault.empty_choices(), Fault.missing_content(),
             Fault.http(400), Fault.disconnect()]
    texts = [f"item-{i}" for i in range(120)]
    plan = {t: [kinds[i % len(kinds)]] * (i % 3) for i, t in enumerate(texts)}
    with FaultServer(plan=plan) as server, ChatClient(endpoint(server, concurrency=8, max_retries=1)) as client:
        results = run_all(client, texts)
    assert [r.key for r in results] == texts  # every key exactly once, in order
    for i, r in enumerate(results):
        n = i % 3
        final_ok = n == 0 or (n == 1 and kinds[i % len(kinds)].kind in ("status", "malformed_json", "disconnect")
                              and kinds[i % len(kinds)].status != 400)
        assert r.ok == final_ok, (i, r)
        assert r.attempts == server.attempts[r.key]
    md = client.meter.to_metadata()
    assert md["items"] == 120 and md["succeeded"] == sum(r.ok for r in results)


def test_concurrency_bound_and_lazy_pull():
    pulled = []
    in_window = []

    def gen():
        for i in range(40):
            pulled.append(i)
            yield ChatRequest(key=str(i), text=f"t{i}")

    with FaultServer(latency_s=0.05) as server, ChatClient(endpoint(server, concurrency=5)) as client:
        for r in client.run(gen()):
            in_window.append(len(pulled) - int(r.key) - 1)
    assert server.max_in_flight == 5  # the bound is reached and never passed
    assert max(in_window) == 5  # exactly `concurrency` pulled past the item being yielded, never more


def test_rate_limit_spaces_attempts():
    with FaultServer() as server, ChatClient(endpoint(server, concurrency=8, rate_limit_rps=20)) as client:
        results = run_all(client, [f"r{i}" for i in range(12)])
    assert all(r.ok for r in results)
    ts = sorted(a.t for a in server.arrivals)
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    assert min(gaps) >= 0.02  # 1/20 s apart at the client; loopback jitter can shave a little off one gap
    assert ts[-1] - ts[0] >= 11 * 0.05 - 0.02  # unlimited, 8 threads would send all 12 within a few ms


def test_rate_limiter_hands_out_evenly_spaced_slots():
    now = [100.0]
    slept = []

    def sleep(s):
        slept.append(round(s, 6))

    lim = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        lim.acquire()
    assert slept == [0.25, 0.5]  # first slot now, then 1/4 s apart, whatever the threads
    now[0] = 200.0  # after an idle spell: no burst credit is saved up
    lim.acquire()
    lim.acquire()
    assert slept == [0.25, 0.5, 0.25]
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_usage_and_cost_are_summed():
    texts = ["one two three", "four five", "six"]
    cfg = endpoint(price_per_1k_prompt_tokens=2.0, price_per_1k_completion_tokens=10.0)
    with FaultServer() as server:
        with ChatClient(cfg.model_copy(update={"base_url": server.base_url})) as client:
            results = run_all(client, texts, images=[png()])
    expect = [usage_for(t, 1, server.reply(t, 1)) for t in texts]
    assert [r.prompt_tokens for r in results] == [e["prompt_tokens"] for e in expect]
    assert [r.completion_tokens for r in results] == [e["completion_tokens"] for e in expect]
    md = client.meter.to_metadata()
    p, c = sum(e["prompt_tokens"] for e in expect), sum(e["completion_tokens"] for e in expect)
    assert (md["prompt_tokens"], md["completion_tokens"]) == (p, c)
    assert md["cost"] == pytest.approx(p / 1000 * 2.0 + c / 1000 * 10.0)
    assert md["wall_s"] > 0 and md["model"] == "m"


def test_images_are_data_urls_with_their_mime_and_text_last():
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, "JPEG")
    with FaultServer() as server, ChatClient(endpoint(server)) as client:
        (r,) = run_all(client, ["q"], images=[png(), jpeg.getvalue()], max_tokens=7, temperature=0.5)
    (a,) = server.arrivals
    assert r.ok and a.n_images == 2 and a.model == "m"
    assert a.image_urls[0].startswith("data:image/png;base64,") and a.image_urls[1].startswith("data:image/jpeg;base64,")
    assert a.body["messages"][0]["content"][-1] == {"type": "text", "text": "q"}
    assert (a.body["max_tokens"], a.body["temperature"]) == (7, 0.5)


def test_unknown_image_bytes_fail_the_item_without_a_request():
    with FaultServer() as server, ChatClient(endpoint(server)) as client:
        bad, good = list(client.run([ChatRequest("bad", "x", images=[b"GIF89a...."]), ChatRequest("good", "y")]))
    assert (bad.reason, bad.attempts) == ("corrupt_image", 0) and good.ok
    assert [a.text for a in server.arrivals] == ["y"]


def test_api_key_from_env(monkeypatch):
    seen = []
    monkeypatch.setenv("DP_TEST_KEY", "sekrit")

    with FaultServer() as server:
        orig = server._httpd.RequestHandlerClass.do_POST

        def do_post(handler):
            seen.append(handler.headers.get("Authorization"))
            orig(handler)

        server._httpd.RequestHandlerClass.do_POST = do_post
        with ChatClient(endpoint(server, api_key_env="DP_TEST_KEY")) as client:
            run_all(client, ["k"])
    assert seen == ["Bearer sekrit"]


def test_abandoned_run_stops_pulling():
    pulled = []

    def gen():
        for i in range(1000):
            pulled.append(i)
            yield ChatRequest(key=str(i), text=f"a{i}")

    with FaultServer() as server, ChatClient(endpoint(server, concurrency=4)) as client:
        it = client.run(gen())
        first = [next(it) for _ in range(3)]
        it.close()
    assert [r.key for r in first] == ["0", "1", "2"] and len(pulled) <= 8
    assert threading.active_count() < 50
