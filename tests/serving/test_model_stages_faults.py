"""ModelGroundingLabeler, ModelTeacher and generate_cards against the fault-injecting server."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from fault_server import Fault, FaultServer

from deepperception.domain.entity import Entity
from deepperception.engine.distillation import CotRequest
from deepperception.engine.knowledge import (DirCardCache, card_cache_key, generate_cards, knowledge_prompt,
                                             knowledge_prompt_hash)
from deepperception.engine.model_labeler import LabelItem, ModelGroundingLabeler, grounding_prompt
from deepperception.engine.model_teacher import ModelTeacher
from deepperception.errors import InputDataError
from deepperception.serving import ChatClient, EndpointConfig


def client_for(server: FaultServer, **kw) -> ChatClient:
    cfg = dict(base_url=server.base_url, model="grounder", timeout_s=2.0, max_retries=2, concurrency=4,
               backoff_base_s=0.01, backoff_max_s=0.02)
    cfg.update(kw)
    return ChatClient(EndpointConfig(**cfg))


def jpeg(w=80, h=40) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (w, h), (90, 10, 10)).save(b, "JPEG")
    return b.getvalue()


def item(i: int, name: str | None = None, w=80, h=40) -> LabelItem:
    return LabelItem(key=f"img-{i}", image=jpeg(w, h), width=w, height=h, entity_name=name or f"entity {i}")


class TestLabeler:
    def test_replies_faults_and_parse_failures_each_come_back_once(self):
        replies = {grounding_prompt("entity 0"): "<|box_start|>(100,200),(300,400)<|box_end|>",
                   grounding_prompt("entity 1"): "I see a red aircraft.",
                   grounding_prompt("entity 2"): "(300,200),(300,400)",
                   grounding_prompt("entity 3"): "(-5,10),(1200,990)"}
        plan = {grounding_prompt("entity 4"): [Fault.http(500)] * 5,
                grounding_prompt("entity 5"): [Fault.http(429), Fault.malformed()],
                grounding_prompt("entity 6"): [Fault.empty_choices()]}
        server = FaultServer(plan=plan, reply=lambda text, n: replies.get(text, "(1,2),(3,4)"))
        with server, client_for(server) as client:
            labeler = ModelGroundingLabeler(client)
            out = list(labeler.label_many(item(i) for i in range(8)))
        assert labeler.name == "openai:grounder"
        assert [o.key for o in out] == [f"img-{i}" for i in range(8)]
        got = {o.key: (o.box, o.reason, o.attempts) for o in out}
        assert got["img-0"] == ((100, 200, 300, 400), None, 1)
        assert got["img-1"] == (None, "no_box", 1)
        assert got["img-2"] == (None, "degenerate_box", 1)
        assert got["img-3"] == ((0, 10, 1000, 990), None, 1)  # clamped like labeling.clean_box
        assert got["img-4"] == (None, "http_5xx", 3)
        assert got["img-5"] == ((1, 2, 3, 4), None, 3)
        assert got["img-6"] == (None, "empty_choices", 1)
        assert out[1].reply == "I see a red aircraft." and "no box" in out[1].error
        assert all(a.image_urls[0].startswith("data:image/jpeg;base64,") for a in server.arrivals)

    def test_pixel_box_format_uses_the_image_size(self):
        server = FaultServer(reply=lambda t, n: "(40,0),(80,20)")
        with server, client_for(server) as client:
            (o,) = ModelGroundingLabeler(client, box_format="pixels").label_many([item(0, w=80, h=40)])
        assert o.box == (500, 0, 1000, 500)

    def test_bad_item_names_the_row(self):
        server = FaultServer()
        with server, client_for(server) as client:
            with pytest.raises(InputDataError, match="row=img-3 field=name"):
                list(ModelGroundingLabeler(client).label_many([item(0), item(3, name=" ")]))

    def test_corrupt_image_is_a_per_item_failure(self):
        server = FaultServer()
        bad = LabelItem("bad", b"\x00\x01not an image", 10, 10, "x")
        with server, client_for(server) as client:
            a, b = ModelGroundingLabeler(client).label_many([bad, item(1)])
        assert (a.reason, a.attempts, b.ok) == ("corrupt_image", 0, True)


ENTS = [{"entity_id": "g/0", "name": "Aster", "box": [10, 20, 300, 400]},
        {"entity_id": "g/1", "name": "Borel", "box": [500, 20, 900, 400]}]


def cot_request(i: int, target: int = 0) -> CotRequest:
    return CotRequest(question_id=f"q{i}", composite_id=f"c{i}", category="glider", split="seen",
                      image_png=jpeg(), prompt=f"prompt {i}", entities=ENTS, target_index=target)


class TestTeacher:
    def test_valid_invalid_and_failed_replies(self):
        replies = {"prompt 0": "Comparison: Borel is red.\n\nConclusion: Aster is at (10,20),(300,400).",
                   "prompt 1": "Conclusion: Aster is at (500,20),(900,400).",
                   "prompt 2": "<think>half", "prompt 3": "No idea.",
                   "prompt 5": "<think>white</think><answer>(10,20),(300,400)</answer>"}
        plan = {"prompt 4": [Fault.hang(3)] * 3, "prompt 5": [Fault.http(503)]}
        server = FaultServer(plan=plan, reply=lambda t, n: replies[t])
        with server, client_for(server, timeout_s=0.3, model="teacher") as client:
            teacher = ModelTeacher(client, temperature=0.7, max_tokens=300)
            out = list(teacher.generate_many(cot_request(i) for i in range(6)))
        assert teacher.name == "openai:teacher"
        assert [o.key for o in out] == [f"q{i}" for i in range(6)]
        assert out[0].ok and out[0].cot.startswith("Comparison") and out[0].attempts == 1
        assert [(o.reason, o.rule) for o in out[1:4]] == [("invalid_cot", "other_box_as_answer"),
                                                          ("invalid_cot", "bad_structure"),
                                                          ("invalid_cot", "no_target_box")]
        assert out[1].error.startswith("other_box_as_answer:") and out[1].reply == replies["prompt 1"]
        assert (out[4].reason, out[4].attempts) == ("timeout", 3)
        assert out[5].ok and out[5].cot == "white" and out[5].attempts == 2
        assert {(a.body["temperature"], a.body["max_tokens"]) for a in server.arrivals} == {(0.7, 300)}


def entity(i: int) -> Entity:
    return Entity(entity_id=f"cars/e{i}", category="cars", name=f"Car Model {i}", split="seen", knowledge_card="")


CARD = "It has a long low bonnet, round twin headlights and a sharply cut-off tail with a small spoiler."


class TestKnowledgeCards:
    def test_cards_cached_validated_and_in_order(self, tmp_path):
        e = [entity(i) for i in range(6)]
        replies = {knowledge_prompt(e[1]): "", knowledge_prompt(e[2]): "Too short.",
                   knowledge_prompt(e[3]): "Sure. " + knowledge_prompt(e[3])}
        plan = {knowledge_prompt(e[4]): [Fault.http(500)] * 3}
        cache = DirCardCache(tmp_path / "cards")
        server = FaultServer(plan=plan, reply=lambda t, n: replies.get(t, CARD))
        with server, client_for(server, model="llm") as client:
            first = list(generate_cards(e, client, cache))
            assert [o.entity_id for o in first] == [x.entity_id for x in e]
            assert [o.reason for o in first] == [None, "empty_reply", "invalid_card", "invalid_card", "http_5xx", None]
            assert first[0].card == CARD and not first[0].cached and first[4].attempts == 3
            assert "echoes the prompt" in first[3].error
            assert all(a.n_images == 0 and isinstance(a.body["messages"][0]["content"], str) for a in server.arrivals)
            n_before = len(server.arrivals)
            second = list(generate_cards(e, client, cache))
        assert [o.cached for o in second] == [True, False, False, False, False, True]
        assert second[0].card == CARD and second[0].attempts == 0
        assert second[4].ok and second[4].attempts == 1  # the server recovered: asked again, now cached
        assert {a.text for a in server.arrivals[n_before:]} == {knowledge_prompt(x) for x in e[1:5]}
        key = card_cache_key("llm", knowledge_prompt_hash(), "cars/e0")
        assert json.loads((tmp_path / "cards" / f"{key}.json").read_text())["card"] == CARD
        assert sorted(p.name for p in (tmp_path / "cards").iterdir()) == sorted(
            f"{card_cache_key('llm', knowledge_prompt_hash(), f'cars/e{i}')}.json" for i in (0, 4, 5))

    def test_all_cached_needs_no_server(self, tmp_path):
        cache = DirCardCache(tmp_path)
        for i in range(3):
            cache.put(card_cache_key("llm", knowledge_prompt_hash(), f"cars/e{i}"), f"card {i} " + CARD)
        cfg = EndpointConfig(base_url="http://127.0.0.1:9/v1", model="llm", max_retries=0)
        with ChatClient(cfg) as client:
            out = list(generate_cards((entity(i) for i in range(3)), client, cache))
        assert [o.card.split()[1] for o in out] == ["0", "1", "2"] and client.meter.requests == 0

    def test_cache_key_depends_on_model_and_prompt(self, tmp_path):
        cache = DirCardCache(tmp_path)
        cache.put(card_cache_key("other-model", knowledge_prompt_hash(), "cars/e0"), CARD)
        server = FaultServer(reply=lambda t, n: CARD + " Also blue.")
        with server, client_for(server, model="llm") as client:
            (o,) = generate_cards([entity(0)], client, cache)
        assert not o.cached and o.card.endswith("Also blue.")

    def test_dir_cache_ignores_corrupt_entries_and_refuses_odd_keys(self, tmp_path):
        cache = DirCardCache(tmp_path)
        (tmp_path / "abc.json").write_text("{not json")
        assert cache.get("abc") is None
        cache.put("abc", "fresh")
        assert cache.get("abc") == "fresh"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
        with pytest.raises(ValueError, match="plain file name"):
            cache.get("../escape")
