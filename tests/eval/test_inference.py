"""Batched, resumable inference: batched == one-at-a-time greedy, resume == uninterrupted run."""

import json
import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dp-hf-home-"))

import pytest  # noqa: E402

from deepperception.errors import ConfigError, InputDataError  # noqa: E402

MAX_NEW = 24


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from deepperception.model.synthetic import cached_tiny_checkpoint
    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def bench():
    from deepperception.model.synthetic import synthetic_bench
    return synthetic_bench(10, seed=0)


@pytest.fixture(scope="module")
def reference_run(tiny_ckpt, bench, tmp_path_factory):
    """Uninterrupted run at batch 16 (one batch of 10 mixed-size images)."""
    from deepperception.eval.inference import run_inference
    out = tmp_path_factory.mktemp("ref")
    return run_inference(bench, tiny_ckpt, out, batch_size=16, max_new_tokens=MAX_NEW)


def test_batched_equals_unbatched(reference_run, tiny_ckpt, bench, tmp_path):
    from deepperception.eval.inference import run_inference
    one = run_inference(bench, tiny_ckpt, tmp_path, batch_size=1, max_new_tokens=MAX_NEW)
    ref = [json.loads(x) for x in reference_run.read_text().splitlines()]
    got = [json.loads(x) for x in one.read_text().splitlines()]
    assert [r["output"] for r in got] == [r["output"] for r in ref]
    assert one.read_bytes() == reference_run.read_bytes()
    # mixed image sizes really produced different prompt lengths (padding was exercised)
    assert len({r["n_prompt_tokens"] for r in ref}) > 3


def test_matches_official_single_question_loop(reference_run, tiny_ckpt, bench):
    """The official loop: per question, model.generate with the checkpoint's own generation_config
    (do_sample=True, top_k=1, repetition_penalty=1.05), decode without special tokens."""
    import torch

    from deepperception.images import decode_image
    from deepperception.model.generation import official_fetch_image
    from deepperception.model.loading import load_model, load_processor

    model, proc = load_model(tiny_ckpt), load_processor(tiny_ckpt)
    ref = {json.loads(x)["question_id"]: json.loads(x)["output"] for x in reference_run.read_text().splitlines()}
    for r in bench.to_pylist()[:3]:
        msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": "data:image;base64,xx"},
                                             {"type": "text", "text": r["question"] + "  Output the thinking process in <think> </think> and final answer (bounding box) in <answer> </answer> tags."}]}]
        text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        img = official_fetch_image(decode_image(r["image"]))
        inputs = proc(text=[text], images=[img], padding=True, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=MAX_NEW)
        out = proc.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True,
                                clean_up_tokenization_spaces=False)[0]
        assert out == ref[r["question_id"]]


def test_output_record_and_run_json(reference_run, tiny_ckpt, bench):
    recs = [json.loads(x) for x in reference_run.read_text().splitlines()]
    assert [r["question_id"] for r in recs] == bench.column("question_id").to_pylist()  # bench order
    r0 = recs[0]
    assert set(r0) == {"question_id", "category", "prompt_mode", "output", "gt_answer", "gt_bbox", "hw",
                       "n_prompt_tokens", "n_output_tokens", "stop"}
    assert r0["gt_bbox"] == [[0.0, 0.0, 100.0, 120.0]] and r0["hw"] == [56, 56] and r0["prompt_mode"] == "r1"
    run = json.loads((reference_run.parent / "run.json").read_text())
    assert run["status"] == "complete" and run["n_outputs"] == 10
    assert run["pixel_limits"] == {"min_pixels": 3136, "max_pixels": 12544}
    assert run["decoding"]["greedy"] is True and run["decoding"]["repetition_penalty"] == 1.05
    assert run["generation_config"]["top_k"] == 1
    assert run["checkpoint"] == str(tiny_ckpt.resolve())
    assert (run["prompt_mode"], run["backend"], run["batch_size"]) == ("r1", "hf", 16)


def test_resume_after_kill_mid_write(reference_run, tiny_ckpt, bench, tmp_path):
    from deepperception.eval.inference import run_inference
    out = tmp_path / "run"
    # first invocation dies after 2 batches of 3 ...
    p = run_inference(bench, tiny_ckpt, out, batch_size=3, max_new_tokens=MAX_NEW, max_batches=2)
    assert json.loads((out / "run.json").read_text())["status"] == "partial"
    data = p.read_bytes()
    assert data.count(b"\n") == 6
    # ... in the middle of writing its second batch: keep 4 complete lines and half of the 5th
    lines = data.split(b"\n")
    p.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][: len(lines[4]) // 2])
    final = run_inference(bench, tiny_ckpt, out, batch_size=4, max_new_tokens=MAX_NEW)
    assert final.read_bytes() == reference_run.read_bytes()
    run = json.loads((out / "run.json").read_text())
    assert run["resumed_from"] == 4 and run["timing"]["generated"] == 6
    # a complete run is idempotent
    assert run_inference(bench, tiny_ckpt, out, max_new_tokens=MAX_NEW).read_bytes() == reference_run.read_bytes()


def test_resume_refuses_a_different_run(reference_run, tiny_ckpt, bench):
    from deepperception.eval.inference import run_inference
    with pytest.raises(ConfigError, match="prompt_mode"):
        run_inference(bench, tiny_ckpt, reference_run.parent, prompt_mode="baseline", max_new_tokens=MAX_NEW)
    with pytest.raises(ConfigError, match="decoding"):
        run_inference(bench, tiny_ckpt, reference_run.parent, max_new_tokens=MAX_NEW + 1)
    with pytest.raises(InputDataError, match="not in this bench"):
        run_inference(bench.slice(0, 5), tiny_ckpt, reference_run.parent, max_new_tokens=MAX_NEW)


def test_load_records_repairs_only_the_tail(tmp_path):
    from deepperception.eval.inference import load_records
    p = tmp_path / "outputs.jsonl"
    p.write_text('{"question_id": "a"}\n{"question_id": "b"}\n{"questio')
    assert list(load_records(p)) == ["a", "b"]
    assert p.read_text() == '{"question_id": "a"}\n{"question_id": "b"}\n'
    p.write_text('{"question_id": "a"}\n{broken\n{"question_id": "b"}\n')
    with pytest.raises(InputDataError, match="corrupt line 2"):
        load_records(p)
    p.write_text('{"question_id": "a"}\n{"answer": "x"}\n')
    with pytest.raises(InputDataError, match="line 2 has no question_id"):
        load_records(p)


def test_bad_rows_are_named(tiny_ckpt, tmp_path):
    from deepperception.eval.inference import run_inference
    rows = [{"question_id": "x", "question": "q", "image": {"bytes": b"not a png", "path": None}, "answer": ""}]
    with pytest.raises(InputDataError, match="row=x field=image"):
        run_inference(rows, tiny_ckpt, tmp_path, max_new_tokens=2)
    with pytest.raises(InputDataError, match="duplicate"):
        run_inference(rows * 2, tiny_ckpt, tmp_path, max_new_tokens=2)


def test_sample_answers_seeded_and_diverse(tiny_ckpt, bench):
    from deepperception.model.sampling import sample_answers
    rows = bench.slice(0, 3)
    a = sample_answers(rows, tiny_ckpt, n=3, max_new_tokens=12, seed=7, batch_size=2)
    b = sample_answers(rows, tiny_ckpt, n=3, max_new_tokens=12, seed=7, batch_size=2)
    assert a == b and list(a) == rows.column("question_id").to_pylist()
    assert all(len(v) == 3 for v in a.values())
    assert any(len(set(v)) > 1 for v in a.values())  # the checkpoint's top_k=1 is NOT applied
    c = sample_answers(rows, tiny_ckpt, n=3, max_new_tokens=12, seed=8, batch_size=2)
    assert c != a


def test_vllm_requests_and_params(tiny_ckpt, bench):
    from deepperception.eval.inference import build_vllm_requests, vllm_sampling_params_kwargs
    from deepperception.model.generation import decoding_from_generation_config
    from deepperception.model.loading import load_processor
    proc = load_processor(tiny_ckpt)
    reqs = build_vllm_requests(bench.to_pylist()[:2], proc, "r1")
    assert reqs[0]["prompt"].count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    assert reqs[0]["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "  Output the thinking process" in reqs[0]["prompt"]
    assert reqs[0]["multi_modal_data"]["image"].size == (56, 56)
    spec = decoding_from_generation_config(json.loads((tiny_ckpt / "generation_config.json").read_text()), 1500)
    kw = vllm_sampling_params_kwargs(spec)
    assert kw["temperature"] == 0.0 and kw["max_tokens"] == 1500 and kw["repetition_penalty"] == 1.05
    vllm = pytest.importorskip("vllm")
    vllm.SamplingParams(**kw)
