"""File primitives shared by the shard builder, the checkpoint's integrity record and the GPU check (stdlib only,
so a script can import it even where torch is broken)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``path`` as ``path.tmp`` and rename it over ``path``: a reader or a kill sees the old file or the
    new one, never half of one. ``data``: the bytes or text, or a function that writes the given path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if callable(data):
        data(tmp)
    elif isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read ``block`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()
