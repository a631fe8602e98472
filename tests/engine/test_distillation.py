from __future__ import annotations

import json
import re

import pytest

from deepperception import boxes, prompts
from deepperception.domain.categories import get_category
from deepperception.engine.composition import CompositionConfig, compose
from deepperception.engine.distillation import (
    COT_SCHEMA,
    DistillConfig,
    Teacher,
    TemplateTeacher,
    distill,
)
from deepperception.errors import InputDataError
from fake_openai_server import FakeOpenAIServer, served_teacher


@pytest.fixture(scope="module")
def composites(labeled):
    return compose(labeled, CompositionConfig(composites_per_category=3, seed=1))


def test_template_cot_structure(composites, entities):
    teacher = TemplateTeacher(entities)
    assert isinstance(teacher, Teacher)
    cot = distill(composites, teacher, DistillConfig(targets_per_composite=2, seed=0))
    assert cot.schema == COT_SCHEMA
    assert cot.num_rows == 2 * composites.num_rows
    by_id = {e.entity_id: e for e in entities}
    comp = {r["composite_id"]: r for r in composites.drop_columns(["image"]).to_pylist()}
    for row in cot.to_pylist():
        assert row["error"] is None and row["teacher_backend"] == "template"
        items = json.loads(comp[row["composite_id"]]["entities"])
        t = int(row["question_id"].rsplit("-", 1)[1])
        assert row["question_id"] == f"{row['category']}/{row['composite_id']}-{t}"
        assert (row["target_entity"], row["target_box"]) == (items[t]["name"], items[t]["box"])
        assert row["teacher_prompt"] == prompts.teacher_prompt(
            [(it["name"], boxes.format_box(it["box"])) for it in items], items[t]["name"], boxes.format_box(items[t]["box"]))
        text = row["cot"]
        sections = [text.index(h) for h in ("Planning:", "Visual analysis:", "Comparison:", "Conclusion:")]
        assert sections == sorted(sections)
        analysis = text[sections[1]:sections[2]]
        bullets = [l for l in analysis.splitlines() if l.startswith("- ")]
        assert len(bullets) == len(items)
        spec = get_category(row["category"])
        target = by_id[items[t]["entity_id"]]
        for bullet, it in zip(bullets, items):  # each bullet: that entity's box and its drawn features
            assert boxes.format_box(it["box"]) in bullet
            for a, v in by_id[it["entity_id"]].attributes.items():
                assert spec.phrase(a, v) in bullet
        comparison = text[sections[2]:sections[3]]
        for it in items:
            if it["entity_id"] == target.entity_id:
                continue
            other = by_id[it["entity_id"]]
            first_diff = next(a for a in spec.axes if other.attributes[a] != target.attributes[a])
            assert f"{spec.phrase(first_diff, other.attributes[first_diff])} instead of {spec.phrase(first_diff, target.attributes[first_diff])}" in comparison
        conclusion = text[sections[3]:]
        assert target.name in conclusion and boxes.format_box(row["target_box"]) in conclusion
        assert row["response"] == f"<think>{text}</think><answer>{boxes.grounding_answer(target.name, row['target_box'])}</answer>"


def test_distill_is_deterministic_and_seeded(composites, entities):
    a = distill(composites, TemplateTeacher(entities), DistillConfig(seed=3))
    assert a.equals(distill(composites, TemplateTeacher(entities), DistillConfig(seed=3)))
    b = distill(composites, TemplateTeacher(entities), DistillConfig(seed=4))
    assert a.column("question_id").to_pylist() != b.column("question_id").to_pylist()


def test_unknown_entity_is_a_recorded_failure(composites, entities):
    teacher = TemplateTeacher([e for e in entities if e.category != "kite"])
    cot = distill(composites, teacher).to_pylist()
    kite = [r for r in cot if r["category"] == "kite"]
    assert kite and all(r["cot"] is None and r["response"] is None and "no attributes" in r["error"] for r in kite)
    assert all(r["error"] is None for r in cot if r["category"] != "kite")


def test_bad_entities_json_names_the_composite(composites, entities):
    import pyarrow as pa

    vals = composites.column("entities").to_pylist()
    vals[1] = "[{\"name\": \"x\"}]"
    bad = composites.set_column(composites.column_names.index("entities"), "entities", pa.array(vals))
    cid = composites.column("composite_id").to_pylist()[1]
    with pytest.raises(InputDataError, match=rf"row={cid} field=entities"):
        distill(bad, TemplateTeacher(entities))


def test_openai_teacher_against_http_server(composites):
    prompt_re = re.compile(r"The bounding box of (.+?) is (\(\d+,\d+\),\(\d+,\d+\))\. Give the reasoning")
    dead = composites.column("composite_id").to_pylist()[0]
    dead_items = json.loads(composites.column("entities").to_pylist()[0])
    # The entity list (names + boxes) identifies the composite; the server fails that one.
    dead_prefix = prompts.teacher_prompt([(it["name"], boxes.format_box(it["box"])) for it in dead_items], "", "").split(". The bounding box")[0]
    seen_params = []

    def responder(image, text, req):
        seen_params.append((req.get("temperature"), req.get("max_tokens")))
        m = prompt_re.search(text)
        assert m, text
        if text.startswith(dead_prefix + ". The bounding box"):
            return 503
        name, box = m.groups()
        return (f"Planning: look for the {name}.\n\nVisual analysis:\n- the image is {image.size[0]}x{image.size[1]}.\n\n"
                f"Comparison: compare.\n\nConclusion: the {name} is at {box}.")

    with FakeOpenAIServer(responder) as server, \
            served_teacher(server, "teacher-72b", max_retries=1, concurrency=4, temperature=0.3, max_tokens=256) as teacher:
        cot = distill(composites, teacher, DistillConfig(targets_per_composite=2)).to_pylist()
    assert server.problems == []
    assert set(seen_params) == {(0.3, 256)}
    assert len(cot) == 2 * composites.num_rows  # a CoT (or an error) for every question
    assert len(server.calls) == len(cot) + 2  # the dead composite's 2 items were each tried twice
    assert sorted(c.text for c in server.calls if not c.text.startswith(dead_prefix + ". The bounding box")) == \
        sorted(r["teacher_prompt"] for r in cot if r["composite_id"] != dead)  # each other question asked once
    for row in cot:
        assert row["teacher_backend"] == "openai:teacher-72b"
        if row["composite_id"] == dead:
            assert row["cot"] is None and row["response"] is None and "HTTP 503" in row["error"]
            assert (row["error_reason"], row["attempts"]) == ("http_5xx", 2)
        else:
            assert row["error"] is None and row["error_reason"] is None and row["attempts"] == 1
            assert row["cot"].endswith(f"the {row['target_entity']} is at {boxes.format_box(row['target_box'])}.")
            assert row["response"].startswith("<think>Planning:")


def test_a_refused_teacher_reply_keeps_the_rule_that_refused_it(composites):
    """A reply whose conclusion gives another entity's box, or no box, is a recorded failure
    (``invalid_cot:<rule>``), never a training example."""
    prompt_re = re.compile(r"The bounding box of (.+?) is (\(\d+,\d+\),\(\d+,\d+\))\. Give the reasoning")

    def responder(image, text, req):
        name, _ = prompt_re.search(text).groups()
        return f"Planning: find the {name}.\n\nComparison: they differ.\n\nConclusion: the {name} is the second one."

    with FakeOpenAIServer(responder) as server, served_teacher(server, "vl", max_retries=0, concurrency=2) as teacher:
        cot = distill(composites.slice(0, 2), teacher, DistillConfig(targets_per_composite=1)).to_pylist()
    assert len(cot) == 2 and all(r["cot"] is None for r in cot)
    assert {r["error_reason"] for r in cot} == {"invalid_cot:no_target_box"}


def test_brief_template_names_the_telling_features_and_passes_the_filter(composites, entities):
    from deepperception.engine.filtering import filter_cot

    full = distill(composites, TemplateTeacher(entities), DistillConfig(targets_per_composite=2, seed=0))
    brief = distill(composites, TemplateTeacher(entities), DistillConfig(targets_per_composite=2, seed=0,
                                                                          template_style="brief"))
    assert brief.column("question_id").to_pylist() == full.column("question_id").to_pylist()
    kept, rejected = filter_cot(brief)
    assert rejected.num_rows == 0 or set(rejected.column("reason").to_pylist()) <= {"duplicate_cot"}
    by_id = {e.entity_id: e for e in entities}
    comp = {r["composite_id"]: r for r in composites.drop_columns(["image"]).to_pylist()}
    for row, long in zip(brief.to_pylist(), full.to_pylist()):
        text = row["cot"]
        assert len(text) < 0.6 * len(long["cot"])
        sections = [text.index(h) for h in ("Planning:", "Visual analysis:", "Comparison:", "Conclusion:")]
        assert sections == sorted(sections)
        items = json.loads(comp[row["composite_id"]]["entities"])
        t = int(row["question_id"].rsplit("-", 1)[1])
        spec = get_category(row["category"])
        target = by_id[items[t]["entity_id"]]
        # exactly one box, the target's, in the conclusion
        assert re.findall(r"\(\d+,\d+\),\(\d+,\d+\)", text) == [boxes.format_box(items[t]["box"])]
        assert text.splitlines()[-1].startswith(f"Conclusion: The {target.name} is the ")
        analysis = text[sections[1]:sections[2]]
        comparison = text[sections[2]:sections[3]]
        described = [a for a in spec.axes if spec.phrase(a, target.attributes[a]) in comparison]
        assert described, text
        # every described feature is what the renderer drew for that entity, in reading order
        parts = analysis.removeprefix("Visual analysis: ").rstrip(".\n").split("; ")
        assert len(parts) == len(items)
        for part, it in zip(parts, items):
            other = by_id[it["entity_id"]]
            for a in described:
                assert spec.phrase(a, other.attributes[a]) in part
        # and the described features tell the target apart from every other entity
        for it in items:
            if it["entity_id"] != target.entity_id:
                assert any(by_id[it["entity_id"]].attributes[a] != target.attributes[a] for a in described)


def test_unknown_template_style_is_refused(entities):
    with pytest.raises(ValueError, match="template style"):
        TemplateTeacher(entities, style="verbose")
