"""Per-item failures: the failure limit, and retrying only the failed items of a partial attempt
against a real HTTP server that fails some requests first and answers them later."""

from __future__ import annotations

import hashlib
import io
import re
import socket

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from deepperception import boxes
from deepperception.engine.composition import CompositionConfig, compose
from deepperception.engine.distillation import distill
from deepperception.engine.failures import FailureSummary, enforce_failure_limit, summarize, summarize_table
from deepperception.engine.labeling import label_images, label_table
from deepperception.errors import InputDataError, StageFailedError
from fake_openai_server import FakeOpenAIServer, served_labeler, served_teacher

PROMPT = "Find and give the bounding box of "
TARGET = re.compile(r"The bounding box of (.+?) is (\(\d+,\d+\),\(\d+,\d+\))\. Give the reasoning")


def _key(img: Image.Image) -> str:
    return hashlib.sha1(np.asarray(img.convert("RGB")).tobytes()).hexdigest()


def test_failure_limit():
    enforce_failure_limit(FailureSummary(0, 10), stage="label", artifact="a", max_failure_rate=0.0)
    enforce_failure_limit(FailureSummary(1, 20, ["x: e"]), stage="label", artifact="a", max_failure_rate=0.05)
    with pytest.raises(StageFailedError, match=r"stage label: 2 of 20 items of a failed \(10.0% > max_failure_rate 5.0%\)"):
        enforce_failure_limit(FailureSummary(2, 20, ["x: e"]), stage="label", artifact="a", max_failure_rate=0.05)
    # Zero good items fail whatever the limit; so does an empty result.
    with pytest.raises(StageFailedError, match="no item succeeded.*x: dead"):
        enforce_failure_limit(FailureSummary(3, 3, ["x: dead"]), stage="label", artifact="a", max_failure_rate=1.0)
    with pytest.raises(StageFailedError, match="0 of 0 items"):
        enforce_failure_limit(FailureSummary(0, 0), stage="distill", artifact="cot", max_failure_rate=1.0)
    with pytest.raises(ValueError):
        enforce_failure_limit(FailureSummary(0, 1), stage="s", artifact="a", max_failure_rate=1.5)


def test_summary_examples_name_the_items():
    s = summarize([f"i{n}" for n in range(9)], [None, *[f"err {n}" for n in range(1, 9)]])
    assert (s.failed, s.total, s.good) == (8, 9, 1)
    assert s.examples == [f"i{n}: err {n}" for n in range(1, 6)]
    assert s.to_metadata() == {"failed": 8, "total": 9, "examples": s.examples}


class FlakyBoxes:
    """Responder: the true box, except for images listed in ``failing`` (HTTP 500) while ``down``."""

    def __init__(self, table: pa.Table):
        self.truth = {}
        for r in table.to_pylist():
            img = Image.open(io.BytesIO(r["image"]))
            self.truth[(r["name"], _key(img))] = boxes.pixels_to_qwen(r["source_box_px"], r["width"], r["height"])
        self.failing: set[str] = set()
        self.asked: list[str] = []

    def __call__(self, image, text, req):
        name, key = text[len(PROMPT):], _key(image)
        self.asked.append(key)
        if key in self.failing:
            return 500
        x1, y1, x2, y2 = self.truth[(name, key)]
        return f"{name}({x1},{y1}),({x2},{y2})"


def test_label_retry_asks_only_the_failed_images(images):
    table = images.slice(0, 8)
    keys = [_key(Image.open(io.BytesIO(b))) for b in table.column("image").to_pylist()]
    responder = FlakyBoxes(table)
    responder.failing = {keys[1], keys[6]}
    with FakeOpenAIServer(responder) as server, served_labeler(server, "vl", max_retries=0, concurrency=3) as labeler:
        first = label_images(table, labeler)
        errors = first.column("label_error").to_pylist()
        assert [i for i, e in enumerate(errors) if e] == [1, 6]
        assert [first.column("label_reason")[i].as_py() for i in (1, 6)] == ["http_5xx", "http_5xx"]
        # The endpoint recovers; the retry sends only the two failed images.
        responder.failing, responder.asked = set(), []
        second = label_images(table, labeler, previous=first)
    assert server.problems == []
    assert sorted(responder.asked) == sorted([keys[1], keys[6]])
    got = second.drop_columns(["image"]).to_pylist()
    assert [r["image_id"] for r in got] == table.column("image_id").to_pylist()  # original order
    for r, k in zip(got, keys):
        assert r["label_error"] is None and tuple(r["box"]) == responder.truth[(r["name"], k)]
    outcome = ["label_error", "label_reason", "label_attempts", "box", "box_source", "label_iou"]
    assert second.drop_columns(outcome).equals(first.drop_columns(outcome))


def test_label_retry_ignores_rows_of_another_backend(images):
    table = images.slice(0, 3)
    responder = FlakyBoxes(table)
    other = table.append_column("box", pa.array([[1, 2, 3, 4]] * 3, pa.list_(pa.int32(), 4))) \
        .append_column("label_backend", pa.array(["openai:other"] * 3)) \
        .append_column("label_error", pa.array([None] * 3, pa.string()))
    with FakeOpenAIServer(responder) as server, served_labeler(server, "vl", max_retries=0, concurrency=1) as labeler:
        out = label_images(table, labeler, previous=other)
    assert len(responder.asked) == 3
    assert out.column("box").to_pylist() != [[1, 2, 3, 4]] * 3


def test_distill_retry_asks_only_the_failed_questions(labeled):
    composites = compose(labeled, CompositionConfig(composites_per_category=1, k_min=2, k_max=3, tile_size=48))
    n = composites.num_rows
    calls: list[str] = []
    fail: set[str] = set()

    def responder(image, text, req):
        calls.append(text)
        if text in fail:
            return 503
        name, box = TARGET.search(text).groups()  # a reply that passes the teacher's CoT validation
        return f"Planning: look.\n\nConclusion: the {name} is at {box}."

    with FakeOpenAIServer(responder) as server, served_teacher(server, "teacher", max_retries=0, concurrency=2) as teacher:
        first = distill(composites, teacher)
        prompts = first.column("teacher_prompt").to_pylist()
        assert first.num_rows == n and all(e is None for e in first.column("error").to_pylist())
        # Second attempt over a table where questions 0 and 2 had failed: only they are asked again.
        errors = [None] * n
        errors[0], errors[2] = "HTTP 503: scripted 503", "no_target_box: conclusion does not restate the target box"
        cots = [None if e else c for c, e in zip(first.column("cot").to_pylist(), errors)]
        partial = first.set_column(first.column_names.index("cot"), "cot", pa.array(cots, pa.string())) \
            .set_column(first.column_names.index("error"), "error", pa.array(errors, pa.string()))
        calls.clear()
        second = distill(composites, teacher, previous=partial)
    assert sorted(calls) == sorted([prompts[0], prompts[2]])
    assert second.equals(first)


def test_compose_without_any_labeled_box_is_an_input_error(labeled):
    no_boxes = labeled.set_column(labeled.column_names.index("box"), labeled.schema.field("box"),
                                  pa.array([None] * labeled.num_rows, labeled.schema.field("box").type))
    with pytest.raises(InputDataError, match=r"stage=compose field=box.*no labeled image of pool 'train'.*without a box"):
        compose(no_boxes, CompositionConfig())


def test_labeling_stops_asking_once_past_the_failure_limit(images):
    table = images.slice(0, 8)
    asked: list[str] = []

    def responder(image, text, req):
        asked.append(text)
        return 500

    # 2 of 8 may fail; the 3rd ends it. The client keeps `concurrency` (1) request pulled ahead of
    # the result it hands back, so the 4th image was already on its way when the 3rd failed.
    with FakeOpenAIServer(responder) as server, served_labeler(server, "vl", max_retries=0, concurrency=1) as labeler:
        out = label_images(table, labeler, max_failure_rate=0.25)
    assert len(asked) == 4
    errors = out.column("label_error").to_pylist()
    assert all("HTTP 500" in e for e in errors[:4])
    assert all(e.startswith("not attempted: 3 items had already failed") for e in errors[4:])
    assert out.column("label_reason").to_pylist() == ["http_5xx"] * 4 + ["not_attempted"] * 4
    assert out.column("label_attempts").to_pylist() == [1] * 4 + [0] * 4
    s = summarize_table(out, "image_id", "label_error")
    assert (s.failed, s.skipped, s.total) == (8, 4, 8) and all("HTTP 500" in e for e in s.examples)
    with pytest.raises(StageFailedError, match=r"4 of 8 items of labeled-images failed \(more than max_failure_rate "
                                               r"25.0% allows; 4 more not attempted\).*HTTP 500"):
        enforce_failure_limit(s, stage="label", artifact="labeled-images", max_failure_rate=0.25)
    # Without a limit every image is asked (the library's default).
    asked.clear()
    with FakeOpenAIServer(responder) as server, served_labeler(server, "vl", max_retries=0, concurrency=1) as labeler:
        label_images(table, labeler)
    assert len(asked) == 8


def test_dead_endpoint_is_a_per_image_connection_failure_naming_it(images):
    table = images.slice(0, 2)
    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with served_labeler(f"http://127.0.0.1:{port}/v1", "vl", max_retries=0, timeout_s=10, concurrency=2) as labeler:
        result = label_table(table, labeler)
    got = result.data.select(["label_error", "label_reason", "label_attempts", "box"]).to_pylist()
    for r in got:
        assert (r["label_reason"], r["label_attempts"], r["box"]) == ("connection", 1, None)
        assert f"ConnectError talking to vl at http://127.0.0.1:{port}/v1" in r["label_error"]
    assert result.stats["usage"]["failures"] == {"connection": 2}


class CountingTeacher:
    name = "counting"
    concurrency = 1

    def __init__(self, reply: str = ""):
        self.calls = 0
        self.reply = reply

    def generate(self, request):
        self.calls += 1
        return self.reply  # empty: a failed item


def test_distillation_stops_asking_once_past_the_failure_limit(labeled):
    composites = compose(labeled, CompositionConfig(composites_per_category=2, k_min=2, k_max=2, tile_size=32))
    teacher = CountingTeacher()
    out = distill(composites, teacher, max_failure_rate=0.0)
    assert teacher.calls == 1 and out.num_rows == composites.num_rows > 1
    assert out.column("error").to_pylist()[0] == "teacher returned an empty CoT"
    assert summarize_table(out, "question_id", "error").skipped == out.num_rows - 1
    ok = CountingTeacher("Planning: fine.")
    assert distill(composites, ok, max_failure_rate=0.0).column("error").null_count == out.num_rows
    assert ok.calls == out.num_rows


@pytest.mark.parametrize("stage_config", ["LabelingStageConfig", "DistillationStageConfig"])
def test_max_failure_rate_is_a_validated_fraction(stage_config):
    import deepperception.config as config
    from pydantic import ValidationError

    cls = getattr(config, stage_config)
    assert cls().max_failure_rate == 0.05 and cls(max_failure_rate=1).max_failure_rate == 1.0
    assert "max_failure_rate" in cls.model_fields and cls.model_fields["max_failure_rate"].description
    for bad in (-0.01, 1.01):
        with pytest.raises(ValidationError, match="max_failure_rate"):
            cls(max_failure_rate=bad)
