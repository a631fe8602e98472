"""Stage 4: knowledge-guided CoT distillation.

For each chosen target in a composite, the teacher receives the image and the paper's prompt
(every entity's name and box, the target and its box) and writes the reasoning that would
identify the target: Planning -> Visual analysis (one bullet per entity) -> Comparison ->
Conclusion. ``TemplateTeacher`` writes that CoT offline from the knowledge cards' attributes
(what the demo uses); ``model_teacher.ModelTeacher`` asks a real VLM (the paper: Qwen2-VL-72B). The SFT
target text is ``<think>{cot}</think><answer>{grounding_answer}</answer>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, runtime_checkable

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from deepperception import boxes, prompts
from deepperception.domain.categories import CATEGORIES, describe
from deepperception.domain.entity import Entity, entities_from_table
from deepperception.engine.common import BOX_INT, ItemFailed, choose_targets, composite_entities, map_bounded, require_columns
from deepperception.engine.failures import FailureBudget, good_rows

COT_SCHEMA = pa.schema(
    [
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("composite_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("target_entity", pa.string(), nullable=False),
        pa.field("target_box", BOX_INT, nullable=False),
        pa.field("teacher_backend", pa.string(), nullable=False),
        pa.field("teacher_prompt", pa.string(), nullable=False),
        pa.field("cot", pa.string()),
        pa.field("response", pa.string()),
        pa.field("error", pa.string()),
        pa.field("error_reason", pa.string()),
        pa.field("attempts", pa.int32()),
    ]
)


@dataclass(frozen=True)
class CotRequest:
    """Everything a teacher may use for one (composite, target) item."""

    question_id: str
    composite_id: str
    category: str
    split: str
    image_png: bytes
    prompt: str
    entities: list[dict]
    """``[{entity_id, name, box}]`` in the composite's reading order; boxes in 0-1000."""
    target_index: int


@runtime_checkable
class Teacher(Protocol):
    """Writes the reasoning that identifies the target; raises ``ItemFailed`` per item."""

    name: str
    concurrency: int

    def generate(self, request: CotRequest) -> str: ...


def sft_response(cot: str, entity: str, box: Sequence[int]) -> str:
    """The assistant's training text.

    >>> sft_response("because", "Aster S glider", (1, 2, 3, 4))
    '<think>because</think><answer><|object_ref_start|>Aster S glider<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|></answer>'
    """
    return f"<think>{cot}</think><answer>{boxes.grounding_answer(entity, box)}</answer>"


def _join(parts: list[str]) -> str:
    """
    >>> _join(["a"]), _join(["a", "b"]), _join(["a", "b", "c"])
    ('a', 'a and b', 'a, b and c')
    """
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class TemplateTeacher:
    """An offline teacher that writes the paper's CoT structure from structured knowledge.

    Every feature it states is one the renderer drew (cards and painters share a vocabulary),
    so its CoTs are correct by construction; it is the reference backend for the synthetic
    domain and for testing the rest of the pipeline without a 72B model.
    """

    name = "template"
    concurrency = 1

    def __init__(self, entities: Sequence[Entity] | pa.Table, style: "TemplateStyle" = "full") -> None:
        if isinstance(entities, pa.Table):
            entities = entities_from_table(entities)
        if style not in ("full", "brief"):
            raise ValueError(f"unknown template style {style!r}; expected 'full' or 'brief'")
        self.style = style
        self.knowledge: dict[str, Entity] = {e.entity_id: e for e in entities}

    def _features(self, e: Entity) -> list[tuple[str, str]]:
        spec = CATEGORIES.get(e.category)
        keys = [a for a in spec.axes if a in e.attributes] if spec else sorted(e.attributes)
        return [(a, describe(e.category, a, e.attributes[a])) for a in keys]

    def generate(self, request: CotRequest) -> str:
        known = []
        for item in request.entities:
            e = self.knowledge.get(item["entity_id"])
            if e is None or not (e.attributes or e.knowledge_card):
                raise ItemFailed(f"template teacher has no attributes or knowledge card for entity {item['entity_id']!r}")
            known.append(e)
        if not all(e.attributes for e in known):
            return self._from_cards(request, known)
        spec = CATEGORIES.get(request.category)
        noun, plural = (spec.noun, spec.plural) if spec else (request.category, request.category)
        t = request.target_index
        target, tbox = known[t], boxes.format_box(request.entities[t]["box"])
        feats = [dict(self._features(e)) for e in known]
        at = lambda j: f"the {noun} at {boxes.format_box(request.entities[j]['box'])}"  # noqa: E731
        if self.style == "brief":
            return self._brief(target, tbox, feats, t, noun, at)

        lines = [
            f"Planning: I need to find the {target.name}. The image shows {len(known)} {plural}, so the category alone "
            f"does not identify it. I will first describe the visual features of each {noun}, then compare them with "
            f"what I know about the {target.name}, and finally pick the one that matches.",
            "",
            "Visual analysis:",
        ]
        for j in range(len(known)):
            lines.append(f"- {at(j)[0].upper() + at(j)[1:]}: {_join(list(feats[j].values()))}.")
        lines += ["", f"Comparison: {target.knowledge_card}"]
        for j in range(len(known)):
            if j == t:
                continue
            diffs = [a for a in feats[t] if feats[j].get(a) != feats[t][a]]
            if diffs:
                contrast = _join([f"{feats[j].get(a, 'no ' + a.replace('_', ' '))} instead of {feats[t][a]}" for a in diffs[:2]])
                lines.append(f"- {at(j)[0].upper() + at(j)[1:]} has {contrast}, so it is not the {target.name}.")
            else:
                lines.append(f"- {at(j)[0].upper() + at(j)[1:]} shows the same listed features, so they alone cannot separate it.")
        lines.append(f"- {at(t)[0].upper() + at(t)[1:]} has {_join(list(feats[t].values()))}, matching every feature of the {target.name}.")
        lines += ["", f"Conclusion: The {target.name} is the {noun} at {tbox}."]
        return "\n".join(lines)


    @staticmethod
    def _telling_axes(feats: list[dict[str, str]], t: int, most: int = 2) -> list[str]:
        """The attributes the brief CoT looks at: greedily, the one that rules out the most other
        entities (ties: category order) until every other entity is ruled out, padded with the
        next differing attributes up to ``most`` for redundancy.

        >>> f = [{"a": "x", "b": "y", "c": "z"}, {"a": "x", "b": "q", "c": "r"}]
        >>> TemplateTeacher._telling_axes(f, 0)
        ['b', 'c']
        """
        axes = list(feats[t])
        others = [j for j in range(len(feats)) if j != t]
        differing = [a for a in axes if any(feats[j].get(a) != feats[t][a] for j in others)]
        chosen: list[str] = []
        left = set(others)
        while left:
            best = max(differing, key=lambda a: (sum(feats[j].get(a) != feats[t][a] for j in left), -axes.index(a)))
            if best in chosen or not any(feats[j].get(best) != feats[t][best] for j in left):
                break  # identical listed features: nothing separates the rest
            chosen.append(best)
            left = {j for j in left if feats[j].get(best) == feats[t][best]}
        for a in differing:
            if len(chosen) >= most:
                break
            if a not in chosen:
                chosen.append(a)
        return sorted(chosen, key=axes.index)

    def _brief(self, target: Entity, tbox: str, feats: list[dict[str, str]], t: int, noun: str, at) -> str:
        """The same four sections in about a quarter of the tokens: which attributes to look at,
        each entity (in the composite's reading order: first, second, ...) described by the
        attributes that tell them apart (the perception), the target's values of those attributes
        from its knowledge card (the knowledge), and the conclusion with the target's box. A box
        costs ~15 tokens (Qwen2's pre-tokenizer splits digits), so only the conclusion carries one.
        Every generation budget of the CPU demo (RL filter, GRPO, evaluation) follows the CoT's
        length, so this is what makes the demo cheap."""
        axes = self._telling_axes(feats, t)
        k = len(feats)
        nth = lambda j: _ORDINALS[j] if j < len(_ORDINALS) else f"number {j + 1}"  # noqa: E731
        values = lambda j: _join([feats[j].get(a, "no " + a.replace("_", " ")) for a in axes])  # noqa: E731
        lines = [f"Planning: I will compare the {_join([a.replace('_', ' ') for a in axes])} of each {noun}.",
                 "Visual analysis: " + "; ".join(f"the {nth(j)} {noun} has {values(j)}" for j in range(k)) + ".",
                 f"Comparison: The {target.name} has {values(t)}, as the {nth(t)} {noun} has.",
                 f"Conclusion: The {target.name} is the {nth(t)} {noun}, at {tbox}."]
        return "\n".join(lines)

    def _from_cards(self, request: CotRequest, known: list[Entity]) -> str:
        """Real entities have no structured attributes, only knowledge cards (an LLM wrote them):
        the CoT states each card's distinguishing facts, then concludes with the target's box.
        It cannot look at the pixels, so it is a format and plumbing backend for real data, not a
        substitute for a VLM teacher (documented in the README)."""
        t = request.target_index
        target, tbox = known[t], boxes.format_box(request.entities[t]["box"])
        at = lambda j: boxes.format_box(request.entities[j]["box"])  # noqa: E731
        first = lambda e: (e.knowledge_card or "").strip().split("\n")[0][:300] or "no knowledge card"  # noqa: E731
        lines = [
            f"Planning: I need to find the {target.name}. The image shows {len(known)} {request.category} objects. "
            f"I will recall what distinguishes each of them, then compare them and pick the one that matches.",
            "",
            "Visual analysis:",
        ]
        lines += [f"- The object at {at(j)} is the {e.name}: {first(e)}" for j, e in enumerate(known)]
        lines += ["", f"Comparison: {first(target)}"]
        lines += [f"- The object at {at(j)} is the {e.name}, not the {target.name}." for j, e in enumerate(known) if j != t]
        lines += ["", f"Conclusion: The {target.name} is the object at {tbox}."]
        return "\n".join(lines)


TemplateStyle = Literal["full", "brief"]
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")


class DistillConfig(BaseModel):
    """Stage options for ``distill``."""

    model_config = ConfigDict(extra="forbid")

    template_style: TemplateStyle = Field(
        "full", description="Template teacher only: full = every feature of every entity, then the contrasts (~360 "
        "tokens with 2 entities); brief = the target's card, each entity's telling features, the match (~120 tokens; "
        "the CPU demo, where every generation budget follows the CoT's length).")

    targets_per_composite: int = Field(1, ge=1, description="Questions (targets) per composite; capped by its entity count.")
    seed: int = Field(0, description="Seed for target choice.")
    concurrency: int | None = Field(None, ge=1, description="Threads; None uses the teacher's own `concurrency`.")


def build_requests(composites: pa.Table, targets_per_composite: int, seed: int) -> list[CotRequest]:
    """One ``CotRequest`` per chosen (composite, target); ``question_id`` is
    ``<category>/<composite_id>-<target index>``."""
    stage = "distill"
    require_columns(composites, ["composite_id", "category", "split", "image", "entities"], stage=stage)
    out = []
    ids = composites.column("composite_id").to_pylist()
    cats = composites.column("category").to_pylist()
    splits = composites.column("split").to_pylist()
    ents = composites.column("entities").to_pylist()
    images = composites.column("image")
    for r, cid in enumerate(ids):
        items = composite_entities(ents[r], stage=stage, row=cid)
        listed = [(it["name"], boxes.format_box(it["box"])) for it in items]
        for t in choose_targets(cid, len(items), targets_per_composite, seed, "sft"):
            prompt = prompts.teacher_prompt(listed, items[t]["name"], boxes.format_box(items[t]["box"]))
            out.append(CotRequest(f"{cats[r]}/{cid}-{t}", cid, cats[r], splits[r], images[r].as_py(), prompt, items, t))
    return out


def distill(composites: pa.Table, teacher: Teacher, cfg: DistillConfig | None = None,
            previous: pa.Table | None = None, max_failure_rate: float | None = None) -> pa.Table:
    """CoT rows (schema ``COT_SCHEMA``) for every chosen target; failed items have null
    ``cot``/``response`` and an ``error`` string.

    ``previous`` is the output of an earlier, partly failed attempt: a question whose CoT the
    same teacher already wrote for the same prompt keeps it, and only the failed questions are
    sent to the teacher again (a 72B teacher is the expensive part of the data engine). Once more
    than ``max_failure_rate`` of the questions failed, the rest are not sent (their ``error`` says
    so): the stage fails anyway."""
    cfg = cfg or DistillConfig()
    if isinstance(teacher, TemplateTeacher) and teacher.style != cfg.template_style:
        teacher = TemplateTeacher(list(teacher.knowledge.values()), style=cfg.template_style)
    requests = build_requests(composites, cfg.targets_per_composite, cfg.seed)
    extra = ["attempts"] if previous is not None and "attempts" in previous.column_names else []
    kept = good_rows(previous, "question_id", ["cot", "error", "teacher_backend", "teacher_prompt", *extra],
                     lambda r: r["error"] is None and bool(r["cot"]) and r["teacher_backend"] == teacher.name)

    budget = FailureBudget(len(requests), max_failure_rate)
    results: list[tuple[str | None, str | None, str | None, int]] = [(None, None, None, 0)] * len(requests)
    todo: list[int] = []
    for i, req in enumerate(requests):
        old = kept.get(req.question_id)
        if old is not None and old["teacher_prompt"] == req.prompt:
            results[i] = (old["cot"], None, None, old.get("attempts") or 0)
        else:
            todo.append(i)

    if hasattr(teacher, "generate_many"):
        # A model teacher streams requests through its endpoint client (bounded in flight).
        def stream():
            for i in todo:
                if budget.exhausted:
                    results[i] = (None, budget.skip_message(), "not_attempted", 0)
                    continue
                yield requests[i]

        index = {requests[i].question_id: i for i in todo}
        for out in teacher.generate_many(stream()):
            i = index[out.key]
            if out.cot:
                results[i] = (out.cot, None, None, out.attempts)
            else:
                budget.record_failure()
                # A refused reply keeps which validation rule refused it (invalid_cot:no_target_box, ...).
                rule = getattr(out, "rule", None)
                reason = f"{out.reason}:{rule}" if out.reason and rule else (out.reason or "item_failed")
                results[i] = (None, out.error or "teacher gave no usable CoT", reason, out.attempts)
    else:
        def one(i: int) -> None:
            req = requests[i]
            if budget.exhausted:
                results[i] = (None, budget.skip_message(), "not_attempted", 0)
                return
            try:
                cot = teacher.generate(req)
            except ItemFailed as exc:
                budget.record_failure()
                results[i] = (None, str(exc), getattr(exc, "reason", None) or "item_failed", 1)
                return
            if cot and cot.strip():
                results[i] = (cot, None, None, 1)
            else:
                budget.record_failure()
                results[i] = (None, "teacher returned an empty CoT", "empty_cot", 1)

        map_bounded(one, todo, cfg.concurrency or teacher.concurrency)
    rows: dict[str, list] = {n: [] for n in COT_SCHEMA.names}
    for req, (cot, err, reason, attempts) in zip(requests, results):
        target = req.entities[req.target_index]
        rows["question_id"].append(req.question_id)
        rows["composite_id"].append(req.composite_id)
        rows["category"].append(req.category)
        rows["split"].append(req.split)
        rows["target_entity"].append(target["name"])
        rows["target_box"].append(target["box"])
        rows["teacher_backend"].append(teacher.name)
        rows["teacher_prompt"].append(req.prompt)
        rows["cot"].append(cot)
        rows["response"].append(sft_response(cot, target["name"], target["box"]) if cot is not None else None)
        rows["error"].append(err)
        rows["error_reason"].append(reason)
        rows["attempts"].append(attempts)
    return pa.Table.from_pydict(rows, schema=COT_SCHEMA)
