"""Helpers shared by the store tests: list and corrupt files behind the store's back."""

from __future__ import annotations


def all_files(store, directory: str) -> set[str]:
    """Every file under ``directory`` of the store's filesystem, relative to it."""
    import pyarrow.fs as pafs

    infos = store.fs.get_file_info(pafs.FileSelector(directory, recursive=True, allow_not_found=True))
    return {i.path[len(directory) + 1:] for i in infos if i.type == pafs.FileType.File}


def overwrite(store, path: str, data: bytes) -> None:
    with store.fs.open_output_stream(path) as f:
        f.write(data)


def flip_byte(store, path: str) -> None:
    """Corrupt a file in place without changing its size (what a size check cannot see)."""
    with store.fs.open_input_stream(path) as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    overwrite(store, path, bytes(data))
