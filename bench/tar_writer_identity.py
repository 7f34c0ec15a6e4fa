"""Does ``webdataset.TarWriter`` keep shards byte-identical across rebuilds? The shard builder writes through it.

    .venv/bin/python bench/tar_writer_identity.py

Writes the same 20 samples (JSON metadata, a FLAC-sized blob, 6 JPEG-sized frames each) twice a second
apart with each writer and compares the SHA-256 of the two tars: the builder's ``ShardWriter``,
``TarWriter`` with its defaults, and ``TarWriter`` with a fixed ``mtime`` (and the builder's mode and
empty owner; the ``format`` argument is not passed on to tarfile by webdataset 1.0.2, whose default
is PAX). Prints one line per writer, and whether the builder's bytes equal the fixed TarWriter's.
"""
from __future__ import annotations

import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import webdataset as wds  # noqa: E402

from affectverse_ds.data.shards import TAR_MTIME, ShardLimits, ShardWriter  # noqa: E402


def samples() -> list[tuple[str, dict[str, bytes]]]:
    out = []
    for i in range(20):
        key = f"meld__test__dia{i}_utt{i % 3}"
        members = {"json": f'{{"name": "dia{i}", "label": {{"emo": "joy"}}}}'.encode()}
        members["flac"] = bytes((i * 7 + j) % 251 for j in range(3000))
        for f in range(6):
            members[f"{f:04d}.jpg"] = bytes((i + f + j) % 253 for j in range(1500))
        out.append((key, members))
    return out


def with_shard_writer(folder: Path) -> bytes:
    writer = ShardWriter(folder, "meld", "test", ShardLimits(max_count=10**6, max_bytes=10**12))
    for key, members in samples():
        writer.add({"__key__": key, **members})
    writer.close()
    return next(folder.glob("*.tar")).read_bytes()


def with_tar_writer(folder: Path, **kwargs) -> bytes:
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, **kwargs) as writer:
        for key, members in samples():
            writer.write({"__key__": key, **members})
    return buf.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def main() -> int:
    fixed = dict(mtime=TAR_MTIME, mode=0o644, user="", group="")
    runs = {"ShardWriter (builder)": lambda d: with_shard_writer(d),
            "TarWriter defaults": lambda d: with_tar_writer(d),
            "TarWriter mtime fixed, builder's mode/owner": lambda d: with_tar_writer(d, **fixed)}
    results = {}
    for name, write in runs.items():
        builds = []
        for attempt in range(2):
            with tempfile.TemporaryDirectory() as tmp:
                builds.append(write(Path(tmp)))
            time.sleep(1.1)  # a different second: any wall-clock mtime shows
        results[name] = builds[0]
        same = digest(builds[0]) == digest(builds[1])
        print(f"{name}: rebuild {'byte-identical' if same else 'DIFFERS'} "
              f"({digest(builds[0])} vs {digest(builds[1])}, {len(builds[0])} bytes)")
    fixed_tw, builder = results["TarWriter mtime fixed, builder's mode/owner"], results["ShardWriter (builder)"]
    print(f"TarWriter (fixed) bytes == ShardWriter bytes: {fixed_tw == builder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
