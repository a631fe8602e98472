"""Batched HF inference vs the official one-question-at-a-time loop, same checkpoint, same bench.

Run:  .venv/bin/python benchmarks/bench_inference.py [--n 32] [--max-new-tokens 128] [--batch-size 16]

Builds the tiny Qwen2-VL (or uses --ckpt) and a synthetic KVG-Bench table with mixed image sizes,
runs both paths in one process, asserts the decoded outputs are identical, and prints samples/s.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def official_loop(rows, ckpt: Path, max_new_tokens: int, per_row: list[float] | None = None) -> dict[str, str]:
    """Transcription of thunlp/DeepPerception@ae5e8a8 deepperception/eval/inference.py (HF branch,
    prompt 'r1'): per question build the message with a base64 image_url, process_vision_info
    (qwen_vl_utils: RGB + smart_resize), apply_chat_template, processor, generate(max_new_tokens),
    trim the prompt, batch_decode(skip_special_tokens=True, clean_up_tokenization_spaces=False)."""
    import torch
    from PIL import Image

    from deepperception.model.generation import official_fetch_image
    from deepperception.model.loading import load_model, load_processor

    model = load_model(ckpt)          # official: Qwen2VLForConditionalGeneration.from_pretrained(bf16, fa2)
    processor = load_processor(ckpt)  # official: AutoProcessor.from_pretrained(ckpt)
    template = "{Question}  Output the thinking process in <think> </think> and final answer (bounding box) in <answer> </answer> tags."
    out = {}
    for d in rows:
        t0 = time.perf_counter()
        b64 = base64.b64encode(d["image"]["bytes"]).decode()
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": f"data:image:base64,{b64}"},
            {"type": "text", "text": template.format(Question=d["question"])}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # process_vision_info(messages): decode the data URL, RGB, smart_resize
        image_inputs = [official_fetch_image(Image.open(io.BytesIO(base64.b64decode(b64.split("base64,")[-1]))))]
        inputs = processor(text=[text], images=image_inputs, padding=True, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            generated_ids = model.generate(**inputs, max_new_tokens=max_new_tokens)
        trimmed = [o[len(i):] for i, o in zip(inputs.input_ids, generated_ids)]
        out[d["question_id"]] = processor.batch_decode(trimmed, skip_special_tokens=True,
                                                       clean_up_tokenization_spaces=False)[0]
        if per_row is not None:
            per_row.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--ckpt", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per path (interleaved); median reported")
    a = ap.parse_args()

    import torch

    from deepperception.eval.inference import run_inference
    from deepperception.model.synthetic import synthetic_bench

    tmp = Path(tempfile.mkdtemp(prefix="bench-inf-"))
    if a.ckpt is None:
        from deepperception.model.synthetic import cached_tiny_checkpoint
        ckpt = cached_tiny_checkpoint(tmp)
    else:
        ckpt = a.ckpt
    bench = synthetic_bench(a.n, seed=0)
    rows = bench.to_pylist()
    # warm-up both paths (first-call allocations, lazy imports)
    official_loop(rows[:2], ckpt, 8)
    run_inference(bench.slice(0, 2), ckpt, tmp / "warm", batch_size=2, max_new_tokens=8)

    import statistics

    t_off_all, t_ours_all = [], []
    for k in range(a.repeats):  # interleaved so machine noise hits both paths alike
        t = time.perf_counter()
        ref = official_loop(rows, ckpt, a.max_new_tokens)
        t_off_all.append(time.perf_counter() - t)
        t = time.perf_counter()
        p = run_inference(bench, ckpt, tmp / f"ours{k}", batch_size=a.batch_size, max_new_tokens=a.max_new_tokens)
        t_ours_all.append(time.perf_counter() - t)
        ours = {json.loads(x)["question_id"]: json.loads(x) for x in p.read_text().splitlines()}
        mism = [q for q in ref if ref[q] != ours[q]["output"]]
        assert not mism, f"{len(mism)} outputs differ, e.g. {mism[:3]}"
    t_off, t_ours = statistics.median(t_off_all), statistics.median(t_ours_all)
    toks = sum(r["n_output_tokens"] for r in ours.values())
    res = {
        "n": a.n, "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size, "torch_threads": torch.get_num_threads(),
        "identical_outputs": True, "output_tokens": toks, "repeats": a.repeats,
        "official_s_runs": [round(x, 2) for x in t_off_all], "ours_s_runs": [round(x, 2) for x in t_ours_all],
        "official_samples_per_s": round(a.n / t_off, 2), "ours_samples_per_s": round(a.n / t_ours, 2),
        "ours_ms_per_sample": round(1000 * t_ours / a.n, 1), "speedup_median": round(t_off / t_ours, 2),
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
