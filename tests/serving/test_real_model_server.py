"""The model-served stages against a real server: ``transformers serve`` with the tiny random
Qwen2-VL (see conftest). Its replies are deterministic noise, so the labeler's and teacher's
items must come back as recorded failures (``no_box`` / ``invalid_cot``), none lost."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from deepperception.domain.entity import Entity
from deepperception.engine.distillation import CotRequest
from deepperception.engine.knowledge import generate_cards
from deepperception.engine.model_labeler import LabelItem, ModelGroundingLabeler
from deepperception.engine.model_teacher import ModelTeacher
from deepperception.serving import ChatClient, ChatRequest, EndpointConfig


def photo(i: int, size=(64, 48)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, (40 * i % 255, 90, 160)).save(b, "PNG")
    return b.getvalue()


@pytest.fixture()
def client(model_server):
    cfg = EndpointConfig(base_url=model_server.base_url, model=model_server.model, timeout_s=60, max_retries=1,
                         concurrency=2, backoff_base_s=0.05, backoff_max_s=0.5,
                         price_per_1k_prompt_tokens=0.5, price_per_1k_completion_tokens=1.5)
    with ChatClient(cfg) as c:
        yield c


def test_chat_client_returns_text_and_usage(client):
    big = ChatRequest("big", "Describe the image.", images=[photo(1, (112, 112))], max_tokens=8)
    small = ChatRequest("small", "Describe the image.", images=[photo(1, (28, 28))], max_tokens=8)
    text_only = ChatRequest("text", "hello", max_tokens=8)
    results = list(client.run([big, small, text_only]))
    assert [r.key for r in results] == ["big", "small", "text"]
    for r in results:
        assert r.ok, r.error
        assert isinstance(r.text, str) and r.text and r.attempts == 1
        assert r.prompt_tokens > 0 and 0 < r.completion_tokens <= 8
    assert results[0].prompt_tokens > results[1].prompt_tokens > results[2].prompt_tokens  # the images reached the model
    md = client.meter.to_metadata()
    assert md["prompt_tokens"] == sum(r.prompt_tokens for r in results)
    assert md["cost"] == pytest.approx(md["prompt_tokens"] / 1000 * 0.5 + md["completion_tokens"] / 1000 * 1.5)


def test_wrong_model_name_is_a_final_4xx(model_server):
    cfg = EndpointConfig(base_url=model_server.base_url, model="not-served", max_retries=3, concurrency=1)
    with ChatClient(cfg) as c:
        (r,) = c.run([ChatRequest("x", "hi", max_tokens=4)])
    assert (r.reason, r.attempts) == ("http_4xx", 1) and "400" in r.error


def test_grounding_labeler_against_real_server(client):
    items = [LabelItem(f"img-{i}", photo(i), 64, 48, f"Aster S{i} glider") for i in range(4)]
    out = list(ModelGroundingLabeler(client, max_tokens=16).label_many(iter(items)))
    assert [o.key for o in out] == [it.key for it in items]
    for o in out:  # a random model writes no parsable box: recorded, with the raw reply
        assert (o.box, o.reason, o.attempts) == (None, "no_box", 1)
        assert o.reply and o.error.startswith("no box in reply")


def test_teacher_against_real_server(client):
    ents = [{"entity_id": "g/0", "name": "Aster", "box": [10, 20, 300, 400]},
            {"entity_id": "g/1", "name": "Borel", "box": [500, 20, 900, 400]}]
    reqs = [CotRequest(f"q{i}", f"c{i}", "glider", "seen", photo(i), f"This image shows Aster and Borel. Find {i}.",
                       ents, i % 2) for i in range(3)]
    out = list(ModelTeacher(client, temperature=0.7, max_tokens=24).generate_many(reqs))
    assert [o.key for o in out] == ["q0", "q1", "q2"]
    for o in out:
        assert (o.cot, o.reason, o.attempts) == (None, "invalid_cot", 1)
        assert o.rule in ("no_target_box", "bad_structure") and o.reply


def test_knowledge_cards_against_real_server(client, tmp_path):
    ents = [Entity(entity_id=f"cars/{i}", category="cars", name=f"Car {i}", split="seen", knowledge_card="")
            for i in range(1)]
    out = list(generate_cards(ents, client, None))
    assert [o.entity_id for o in out] == ["cars/0"]
    # 256 tokens of the tiny model's noise: a card or an invalid_card, but always recorded
    assert all(o.ok or o.reason == "invalid_card" for o in out) and all(o.attempts == 1 for o in out)
