from __future__ import annotations

import pyarrow as pa
import pytest

from deepperception.engine.composition import CompositionConfig, compose
from deepperception.engine.distillation import DistillConfig, TemplateTeacher, distill
from deepperception.engine.filtering import REASONS, FilterConfig, filter_cot
from deepperception.errors import InputDataError


@pytest.fixture(scope="module")
def cot(labeled, entities):
    composites = compose(labeled, CompositionConfig(composites_per_category=3, seed=5))
    return distill(composites, TemplateTeacher(entities), DistillConfig(targets_per_composite=1))


def _edit(table: pa.Table, i: int, **values) -> pa.Table:
    rows = table.to_pylist()
    rows[i].update(values)
    return pa.Table.from_pylist(rows, schema=table.schema)


def test_template_cots_all_pass(cot):
    kept, rejected = filter_cot(cot)
    assert kept.num_rows == cot.num_rows and rejected.num_rows == 0
    assert kept.schema == cot.schema
    assert rejected.column_names == cot.column_names + ["reason", "reason_detail"]


def test_each_rule_rejects_with_its_reason(cot):
    rows = cot.to_pylist()
    good = rows[0]["cot"]
    name = rows[0]["target_entity"]
    box_txt = good.rsplit(" at ", 1)[1]
    other_name = next(r["target_entity"] for r in rows if r["target_entity"] != name)
    t = cot
    t = _edit(t, 0, cot=None, error="HTTP 500 from x")
    t = _edit(t, 1, cot="   ")
    t = _edit(t, 2, cot="Conclusion: tiny.")
    t = _edit(t, 3, cot=rows[3]["cot"] + "x" * 7000)
    t = _edit(t, 4, cot=rows[4]["cot"].replace("Planning:", "<think>Planning:"))
    t = _edit(t, 5, cot=good.rsplit("Conclusion:", 1)[0] + f"Conclusion: The {other_name} is at {box_txt}")
    t = _edit(t, 6, cot=good.rsplit("Conclusion:", 1)[0] + f"Conclusion: The {name} is the one described above.",
              target_entity=name, target_box=rows[0]["target_box"])
    x1, y1, x2, y2 = rows[0]["target_box"]
    t = _edit(t, 7, cot=good.rsplit("Conclusion:", 1)[0] + f"Conclusion: The {name} is at ({x1},{y1}),({x2},{y2 - 40}).",
              target_entity=name, target_box=rows[0]["target_box"])
    t = _edit(t, 8, question_id=rows[9]["question_id"])  # row 8 keeps the id, row 9 becomes the duplicate
    t = _edit(t, 10, cot=rows[11]["cot"], target_entity=rows[11]["target_entity"], target_box=rows[11]["target_box"])
    kept, rejected = filter_cot(t)
    got = dict(zip(rejected.column("question_id").to_pylist(), rejected.column("reason").to_pylist()))
    reasons = rejected.column("reason").to_pylist()
    assert reasons == ["teacher_error", "empty_cot", "too_short", "too_long", "tag_markup", "conclusion_missing_target",
                       "conclusion_missing_box", "conclusion_box_mismatch", "duplicate_question", "duplicate_cot"]
    assert set(reasons) == set(REASONS)
    assert "IoU" in rejected.column("reason_detail").to_pylist()[7]
    assert kept.num_rows + rejected.num_rows == t.num_rows
    assert rows[9]["question_id"] in got  # the second row with the id is the duplicate
    # A looser IoU bar accepts the slightly-off conclusion box.
    kept_loose, rej_loose = filter_cot(t, FilterConfig(min_conclusion_iou=0.5))
    assert "conclusion_box_mismatch" not in rej_loose.column("reason").to_pylist()


def test_missing_column(cot):
    with pytest.raises(InputDataError, match="field=cot"):
        filter_cot(cot.drop_columns(["cot"]))
