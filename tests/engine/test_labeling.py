from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from deepperception import boxes
from deepperception.engine.labeling import (
    BoxLabeler,
    LabelConfig,
    OracleLabeler,
    label_images,
    label_table,
)
from deepperception.errors import InputDataError
from fake_openai_server import FakeOpenAIServer, served_labeler

PROMPT = "Find and give the bounding box of "


def test_oracle_boxes_match_renderer(labeled, images):
    assert isinstance(OracleLabeler(), BoxLabeler)
    assert labeled.num_rows == images.num_rows
    assert labeled.column_names == images.column_names + ["box", "box_source", "label_backend", "label_error",
                                                          "label_reason", "label_attempts", "label_iou"]
    assert str(labeled.schema.field("box").type) == "fixed_size_list<item: int32>[4]"
    for row in labeled.drop_columns(["image"]).to_pylist():
        assert row["box"] == list(boxes.pixels_to_qwen(row["source_box_px"], row["width"], row["height"]))
        assert row["label_backend"] == "oracle" and row["label_error"] is None
        assert row["box_source"] == "oracle" and row["label_iou"] == pytest.approx(1.0)


def test_pool_selection(images):
    only_test = label_images(images, OracleLabeler(), LabelConfig(pools=["test"]))
    assert set(only_test.column("pool").to_pylist()) == {"test"}
    assert 0 < only_test.num_rows < images.num_rows


def test_oracle_without_source_box_names_the_row(images):
    table = images.slice(0, 3)
    boxes_col = table.column("source_box_px").to_pylist()
    boxes_col[1] = None
    table = table.set_column(table.column_names.index("source_box_px"), table.schema.field("source_box_px"),
                             pa.array(boxes_col, table.schema.field("source_box_px").type))
    with pytest.raises(InputDataError, match=r"row=glider/00/001 field=source_box_px"):
        label_images(table, OracleLabeler())


def test_corrupt_image_is_rejected_with_its_reason_and_the_rest_labeled(images):
    table = images.slice(0, 3)
    data = table.column("image").to_pylist()
    data[1] = data[1][:40]  # a truncated PNG
    table = table.set_column(table.column_names.index("image"), "image", pa.array(data, pa.binary()))
    result = label_table(table, OracleLabeler())
    assert result.data.column("image_id").to_pylist() == ["glider/00/000", "glider/00/002"]
    assert result.rejected.to_pylist() == [{"item_id": "glider/00/001", "stage": "label", "reason": "corrupt_image",
                                            "detail": result.rejected.column("detail")[0].as_py()}]
    assert "does not decode" in result.rejected.column("detail")[0].as_py()
    assert result.stats["rejected"] == {"corrupt_image": 1}


def test_missing_column_is_named(images):
    with pytest.raises(InputDataError, match="field=source_box_px"):
        label_images(images.drop_columns(["source_box_px"]), OracleLabeler())


def _key(img: Image.Image) -> str:
    return hashlib.sha1(np.asarray(img.convert("RGB")).tobytes()).hexdigest()


def test_openai_labeler_against_http_server(images, monkeypatch):
    import deepperception.eval.parsing  # noqa: F401  (the labeler parses replies with it: a broken import fails here)
    table = images.slice(0, 8)
    rows = table.to_pylist()
    truth = {}
    for r in rows:
        img = Image.open(io.BytesIO(r["image"]))
        truth[(r["name"], _key(img))] = boxes.pixels_to_qwen(r["source_box_px"], r["width"], r["height"])
    flaky_name, dead_name = rows[0]["name"], rows[4]["name"]  # images 0-3: entity A, 4-7: entity B
    flaky_calls: dict[str, int] = {}

    def responder(image: Image.Image, text: str, req: dict):
        assert text.startswith(PROMPT)
        name = text[len(PROMPT):]
        key = _key(image)
        if name == dead_name:
            return 500
        if name == flaky_name:
            flaky_calls[key] = flaky_calls.get(key, 0) + 1
            if flaky_calls[key] == 1:
                return 500
            if key == _key(Image.open(io.BytesIO(rows[3]["image"]))):
                return "Sorry, I cannot find it."
        x1, y1, x2, y2 = truth[(name, key)]
        # What Qwen2-VL's answer looks like once special tokens are skipped.
        return f"{name}({x1},{y1}),({x2},{y2})"

    monkeypatch.setenv("DP_TEST_VL_KEY", "k")  # the key comes from the variable the endpoint names
    with FakeOpenAIServer(responder) as server, \
            served_labeler(server, "fake-vl", api_key_env="DP_TEST_VL_KEY", timeout_s=10, max_retries=2,
                           concurrency=3) as labeler:
        result = label_table(table, labeler)
    out = result.data
    assert server.problems == []
    assert {c.model for c in server.calls} == {"fake-vl"}
    assert {c.authorization for c in server.calls} == {"Bearer k"}
    assert {c.params["max_tokens"] for c in server.calls} == {128}
    got = out.drop_columns(["image"]).to_pylist()
    assert all(r["label_backend"] == "openai:fake-vl" for r in got)
    for i in (0, 1, 2):  # flaky: first call 500, retried, then correct
        assert got[i]["label_error"] is None and got[i]["label_reason"] is None and got[i]["label_attempts"] == 2
        assert tuple(got[i]["box"]) == truth[(rows[i]["name"], _key(Image.open(io.BytesIO(rows[i]["image"]))))]
        assert got[i]["box_source"] == "model" and got[i]["label_iou"] == pytest.approx(1.0)
    assert got[3]["box"] is None and "no box in reply" in got[3]["label_error"]
    assert (got[3]["label_reason"], got[3]["label_attempts"]) == ("no_box", 2)
    for i in range(4, 8):  # always 500: recorded, not raised, after 1 + max_retries attempts
        assert got[i]["box"] is None and "HTTP 500" in got[i]["label_error"]
        assert (got[i]["label_reason"], got[i]["label_attempts"]) == ("http_5xx", 3)
    assert server.statuses.count(500) == 4 + 4 * 3
    assert all(n == 2 for n in flaky_calls.values())
    usage = result.stats["usage"]  # the client's meter: every HTTP attempt, failures by reason
    assert (usage["items"], usage["requests"], usage["retries"]) == (8, len(server.calls), 4 + 4 * 2)
    assert usage["failures"] == {"http_5xx": 4}  # the unparsable reply was a good HTTP answer


def test_openai_labeler_pixel_boxes(images):
    import deepperception.eval.parsing  # noqa: F401  (the labeler parses replies with it: a broken import fails here)
    row = images.slice(0, 1).to_pylist()[0]

    def responder(image, text, req):
        x1, y1, x2, y2 = (int(v) for v in row["source_box_px"])
        return f"<answer>({x1},{y1}),({x2},{y2})</answer>"

    with FakeOpenAIServer(responder) as server, \
            served_labeler(server, "qwen25", box_format="pixels", concurrency=1) as labeler:
        out = label_images(images.slice(0, 1), labeler)
    assert out.column("box").to_pylist()[0] == list(boxes.pixels_to_qwen(row["source_box_px"], 96, 96))
    assert out.column("label_backend").to_pylist() == ["openai:qwen25"]
