"""Hostile input files, fuzzed: corrupt, truncated, mislabelled and decompression-bomb images through
the real loaders, and bench Parquet files with a dropped or retyped column through the real reader and
scorer. Each must end in a clear error (or per-item problem) naming the file, never a traceback, a
hang or a 300 MB decode.
"""

from __future__ import annotations

import io
import resource
import struct
import time
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from deepperception.cli_errors import render_error
from deepperception.errors import InputDataError
from deepperception.eval.io import read_bench_for_scoring
from deepperception.eval.scoring import score
from deepperception.images import ImageProblem, decode_image, open_photo, read_image_bytes


def _encoded(fmt: str, w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (30, 140, 90)).save(buf, format=fmt)
    return buf.getvalue()


def _png_bomb(w: int, h: int) -> bytes:
    """A few hundred bytes of PNG whose header declares w x h pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    idat = zlib.compress(b"\x00" * (1 + 3 * w) * 2)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _inside_pixel_data(png: bytes, rng) -> int:
    """A cut point inside the first 90 % of the PNG's compressed pixels. A cut after them (only the
    IEND chunk or the zlib trailer missing) leaves every pixel readable, and PIL rightly decodes it."""
    at = png.index(b"IDAT") + 4
    n = int.from_bytes(png[at - 8:at - 4], "big")
    return at + rng.randrange(0, max(1, int(n * 0.9)))


def _hostile_images(rng) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the ImageProblem reason open_photo must give)."""
    jpg, png = _encoded("JPEG"), _encoded("PNG")
    return {
        "random.jpg": (bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096))), "corrupt_image"),
        "truncated.jpg": (jpg[: rng.randrange(20, len(jpg) - 10)], "corrupt_image"),
        "truncated.png": (png[: _inside_pixel_data(png, rng)], "corrupt_image"),
        "png_named.jpg": (b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(200)), "corrupt_image"),
        "zero.jpg": (b"", "empty_image"),
        "bomb_30000.png": (_png_bomb(30000, 30000), "decompression_bomb"),  # past 2x PIL's limit: PIL raises
        "bomb_10000.png": (_png_bomb(10000, 10000), "decompression_bomb"),  # 1x-2x: PIL only warns
    }


@pytest.mark.fault("fuzz.images")
def test_corrupt_and_bomb_images_are_clear_item_errors_naming_the_file(reliability, fault_rng, tmp_path):
    cases = _hostile_images(fault_rng)
    names = list(cases)
    fault_rng.shuffle(names)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bad, t0 = [], time.monotonic()
    for name in names:
        data, reason = cases[name]
        path = tmp_path / name
        path.write_bytes(data)
        start = time.monotonic()
        # 1. a source photo by URI (labeling, composition): read_image_bytes + open_photo.
        try:
            open_photo(read_image_bytes(None, str(path)), name=str(path))
            bad.append(f"{name}: open_photo accepted it")
        except ImageProblem as exc:
            if exc.reason != reason or (reason != "empty_image" and name not in exc.detail) or name not in str(exc):
                bad.append(f"{name}: open_photo said {exc}")
        except Exception as exc:
            bad.append(f"{name}: open_photo raised {exc!r}")
        # 2. an image cell of a table (eval, compose, training preflight): decode_image, bytes and path.
        for value in (data, str(path), {"bytes": data, "path": None}):
            try:
                decode_image(value, stage="eval.images", row=7, artifact=f"bench/{name}.parquet")
                bad.append(f"{name}: decode_image accepted {type(value).__name__}")
            except InputDataError as exc:
                msg, code = render_error(exc)
                if not (msg.startswith("error: ") and code == 2 and name in msg and "row=7" in msg):
                    bad.append(f"{name}: decode_image said {msg!r} ({code})")
            except Exception as exc:
                bad.append(f"{name}: decode_image raised {exc!r}")
        if time.monotonic() - start > 5:
            bad.append(f"{name}: took {time.monotonic() - start:.1f}s")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    if grown_mb > 150:  # a decoded 10000x10000 RGB image alone is 300 MB
        bad.append(f"peak memory grew {grown_mb:.0f} MB")
    reliability.record(lost=len(bad), injected=len(names) * 4, recover_s=time.monotonic() - t0,
                       detail=f"{len(names)} hostile files x (open_photo by URI, decode_image bytes/path/struct); "
                              f"peak +{grown_mb:.0f} MB; {bad[:3]}")
    assert not bad, bad


# ---- bench Parquet with missing or mistyped columns --------------------------------------------
COLUMNS = ("question_id", "category", "answer")
SOL = "<|object_ref_start|>X<|object_ref_end|><|box_start|>(1,2),(30,40)<|box_end|>"
GOOD = {"question_id": ["q0", "q1", "q2"], "category": ["aircraft", "car", "bird"], "answer": [SOL] * 3}
WRONG_TYPES = {
    "int64": pa.array([1, 2, 3], pa.int64()),
    "float64": pa.array([1.5, float("nan"), 3.0]),
    "binary": pa.array([b"a", b"b", b"c"]),
    "null": pa.nulls(3),
    "list": pa.array([["a"], ["b"], []], pa.list_(pa.string())),
    "struct": pa.array([{"x": 1}, {"x": 2}, {"x": 3}]),
    "bool": pa.array([True, False, True]),
}


@pytest.mark.fault("fuzz.parquet")
def test_bench_parquet_with_a_dropped_or_retyped_column_is_a_clear_error(reliability, fault_rng, tmp_path):
    seen: list[str] = []
    bad: list[str] = []
    t0 = time.monotonic()

    @settings(max_examples=30, deadline=2000, suppress_health_check=list(HealthCheck))
    @seed(fault_rng.randrange(2**32))
    @given(st.sampled_from(COLUMNS), st.one_of(st.just("drop"), st.sampled_from(sorted(WRONG_TYPES))),
           st.booleans())
    def body(column, change, rename):
        cols = {c: pa.array(v, pa.string()) for c, v in GOOD.items()}
        if change == "drop":
            del cols[column]
            if rename:  # a near-miss name, as a user's export would have it
                cols[column.upper()] = pa.array(GOOD[column], pa.string())
        else:
            cols[column] = WRONG_TYPES[change]
        path = tmp_path / f"bench_{len(seen)}.parquet"
        pq.write_table(pa.table(cols), path)
        seen.append(f"{column}:{change}")
        try:
            result = score(read_bench_for_scoring(path), {"q0": "<answer>(1,2),(30,40)</answer>"},
                           empty_groups="omit", n_resamples=10, artifact=str(path))
            bad.append(f"{column}:{change} scored {result.summary()['num_questions']} rows")
        except InputDataError as exc:
            msg, code = render_error(exc)
            if not (msg.startswith("error: ") and code == 2 and path.name in msg and column in msg):
                bad.append(f"{column}:{change}: {msg!r} ({code})")
        except Exception as exc:
            bad.append(f"{column}:{change} raised {exc!r}")

    body()
    reliability.record(lost=len(bad), injected=len(seen), recover_s=time.monotonic() - t0,
                       detail=f"{len(seen)} bench files ({len(set(seen))} distinct column faults) through "
                              f"read_bench_for_scoring + score; {bad[:3]}")
    assert len(seen) >= 10
    assert not bad, bad[:5]


@pytest.mark.fault("fuzz.parquet")
def test_eval_cli_on_a_bench_with_a_retyped_column_exits_2_and_writes_nothing(reliability, fault_rng, tmp_path):
    """The real `deepperception eval score` process: `error:` naming file and column, exit 2, no report."""
    import subprocess
    import sys
    from pathlib import Path

    column = fault_rng.choice(COLUMNS)
    change = fault_rng.choice(["drop", *sorted(WRONG_TYPES)])
    cols = {c: pa.array(v, pa.string()) for c, v in GOOD.items()}
    if change == "drop":
        del cols[column]
    else:
        cols[column] = WRONG_TYPES[change]
    bench = tmp_path / "user_bench.parquet"
    pq.write_table(pa.table(cols), bench)
    outputs = tmp_path / "outputs.jsonl"
    outputs.write_text('{"question_id": "q0", "answer": "<answer>(1,2),(30,40)</answer>"}\n', encoding="utf-8")
    out = tmp_path / "report"
    t0 = time.monotonic()
    exe = Path(sys.executable).with_name("deepperception")
    proc = subprocess.run([str(exe), "eval", "score", "--bench", str(bench), "--outputs", str(outputs),
                           "--out", str(out), "--empty-groups", "omit", "--resamples", "10"],
                          capture_output=True, text=True, timeout=60)
    err = proc.stderr.strip()
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit {proc.returncode}")
    if not err.startswith("error: ") or "Traceback" in err or bench.name not in err or column not in err:
        problems.append(f"stderr {err[-300:]!r}")
    if out.exists() and any(out.iterdir()):
        problems.append(f"wrote {sorted(p.name for p in out.iterdir())}")
    reliability.record(lost=len(problems), corrupted=int(out.exists() and any(out.iterdir())), injected=1,
                       recover_s=time.monotonic() - t0, detail=f"CLI on bench with {column} {change}: {problems}")
    assert not problems, problems
