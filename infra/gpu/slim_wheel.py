"""Drop optional members from a wheel so the GPU smoke's wheelhouse fits its 64 MiB limit.

    python infra/gpu/slim_wheel.py WHEEL PATTERN [PATTERN ...]

Why: pyarrow's wheel alone is ~52 MiB, most of it optional components the pipeline never loads
(Arrow Flight, the S3 filesystem, C++ headers, its own tests). Removing them leaves a wheel that
imports and reads/writes Parquet exactly as before: ``pyarrow.fs`` already treats a missing
``_s3fs`` as "S3 not built", and ``pyarrow.flight`` is only imported on use. The wheel keeps its
name and version; its ``RECORD`` is rewritten with the remaining files' hashes (so ``pip`` installs
it as any wheel) and ``<dist-info>/SLIMMED.txt`` lists what was removed.

Stdlib only (``zipfile``), so it runs wherever ``wheels.sh`` does.
"""

from __future__ import annotations

import base64
import csv
import fnmatch
import hashlib
import io
import os
import sys
import tempfile
import zipfile


def record_hash(data: bytes) -> str:
    """A RECORD entry's hash (PEP 376/427: urlsafe base64 sha256, no padding).

    >>> record_hash(b"")
    'sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU'
    """
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim(path: str, patterns: list[str]) -> tuple[int, int, list[str]]:
    """Rewrite the wheel at ``path`` without the members matching any of ``patterns`` (fnmatch on
    the member path); returns ``(bytes before, bytes after, removed members)``."""
    before = os.path.getsize(path)
    with zipfile.ZipFile(path) as src:
        infos = src.infolist()
        dist_info = next(i.filename.split("/")[0] for i in infos if i.filename.split("/")[0].endswith(".dist-info"))
        record_name = f"{dist_info}/RECORD"
        removed = [i.filename for i in infos if any(fnmatch.fnmatch(i.filename, p) for p in patterns)]
        if record_name in removed or any(r.startswith(dist_info + "/") for r in removed):
            raise SystemExit(f"refusing to remove {dist_info} metadata")
        keep = [i for i in infos if i.filename not in removed and i.filename != record_name]
        fd, tmp = tempfile.mkstemp(suffix=".whl", dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        rows = []
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for info in keep:
                data = src.read(info)
                dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
                rows.append((info.filename, record_hash(data), str(len(data))))
            note = ("Removed by infra/gpu/slim_wheel.py (optional components; see infra/README.md):\n"
                    + "".join(f"{r}\n" for r in removed)).encode()
            dst.writestr(f"{dist_info}/SLIMMED.txt", note)
            rows.append((f"{dist_info}/SLIMMED.txt", record_hash(note), str(len(note))))
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows([*rows, (record_name, "", "")])
            dst.writestr(record_name, buf.getvalue())
    os.replace(tmp, path)
    return before, os.path.getsize(path), removed


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    before, after, removed = slim(argv[0], argv[1:])
    print(f"{os.path.basename(argv[0])}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB, {len(removed)} members removed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
