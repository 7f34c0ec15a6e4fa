"""Check a shard folder against the shard contract, sizes.json and manifest.parquet.

    python -m data_prep.verify_shards SHARDS

Reads every sample as the loaders do (``data/tars.py``: webdataset's reader, members bounded) and prints one line
per problem; exits 1 when there is any.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from affectverse_ds.bounded import BoundedReadError, check_regular, read_bounded
from affectverse_ds.data import schema
from affectverse_ds.data.tars import tar_samples


def check_sample(sample: dict) -> list[str]:
    """Problems of one sample as read by webdataset (raw bytes per extension), one line each.

    The loader's check (:func:`schema.check_sample`) in its strict form, which adds what the builder
    guarantees (224 px frames, counts derived from ``duration``).
    """
    problems, _ = schema.check_sample(sample, strict=True)
    return [f"{sample.get('__key__', '?')}: {p}" for p in problems]


def verify_dir(folder: Path) -> list[str]:
    """Every problem found in a shard folder; an empty list means it is sound.

    Args:
        folder: output folder of ``data_prep.build_shards``.

    Returns:
        One line per problem.
    """
    folder = Path(folder)
    problems = [f"unfinished shard {p.name}" for p in sorted(folder.glob("*.tar.tmp"))]
    for name in (schema.SIZES_FILE, schema.MANIFEST_FILE):
        if not (folder / name).exists():
            problems.append(f"missing {name}")
    if problems and not (folder / schema.SIZES_FILE).exists():
        return problems
    try:
        sizes = json.loads(read_bounded(folder / schema.SIZES_FILE, 16 << 20, schema.SIZES_FILE))
    except BoundedReadError as err:
        return problems + [str(err)]
    except (ValueError, RecursionError) as err:
        return problems + [f"{schema.SIZES_FILE} is not valid JSON: {type(err).__name__}: {err}"]
    if not isinstance(sizes, dict) or not all(isinstance(v, int) and v >= 0 for v in sizes.values()):
        return problems + [f"{schema.SIZES_FILE} must map shard names to sample counts"]
    on_disk = sorted(p.name for p in folder.glob("*.tar"))
    problems += [f"shard {n} not in {schema.SIZES_FILE}" for n in on_disk if n not in sizes]
    problems += [f"{schema.SIZES_FILE} lists missing shard {n}" for n in sizes if n not in on_disk]
    counts, keys = Counter(), Counter()
    urls = [str(folder / n) for n in sorted(sizes) if n in on_disk]
    special = []
    for url in urls:  # a FIFO or device in place of a shard would block the open: named, then not read
        try:
            check_regular(url)
        except BoundedReadError as err:
            problems.append(f"{Path(url).name}: {str(err).split(': ', 1)[1]}")
            special.append(url)
    urls = [u for u in urls if u not in special]
    for url in urls:
        # a tar error is one line and ends that shard only; every other shard and sample is still checked
        def unreadable(exn: Exception, url=url) -> bool:
            problems.append(f"{Path(url).name}: unreadable tar data: {type(exn).__name__}: {exn}")
            return False  # stop reading this shard (what follows a broken header cannot be trusted)

        try:
            for sample in tar_samples(handler=unreadable)(iter([{"url": url}])):
                counts[Path(url).name] += 1
                keys[sample["__key__"]] += 1
                problems += check_sample(sample)
        except Exception as err:  # noqa: BLE001  (whatever the bytes, one line and carry on)
            problems.append(f"{Path(url).name}: unreadable: {type(err).__name__}: {err}")
    problems += [f"{n}: {counts[n]} samples, {schema.SIZES_FILE} says {sizes[n]}"
                 for n in sizes if n in on_disk and counts[n] != sizes[n]]
    problems += [f"key {k} appears {c} times" for k, c in keys.items() if c > 1]
    if (folder / schema.MANIFEST_FILE).exists():
        problems += _check_manifest(folder / schema.MANIFEST_FILE, counts, set(keys))
    return problems


def _check_manifest(path: Path, counts: Counter, keys: set[str]) -> list[str]:
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # noqa: BLE001  (pyarrow raises several types for a damaged file)
        return [f"{schema.MANIFEST_FILE} is unreadable: {type(err).__name__}: {err}"]
    problems = [f"manifest: {r['key']} has status {r['status']!r}" for r in rows
                if r["status"] not in ("accepted", "rejected")]
    problems += [f"manifest: rejected {r['key']} has no reason" for r in rows
                 if r["status"] == "rejected" and not r["reason"]]
    accepted = [r for r in rows if r["status"] == "accepted"]
    per_shard = Counter(r["shard"] for r in accepted)
    problems += [f"manifest: {n} accepted rows for {s}, shard holds {counts[s]}"
                 for s, n in per_shard.items() if counts[s] != n]
    problems += [f"manifest: shard {s} has no accepted rows" for s in counts if s not in per_shard]
    listed = {r["key"] for r in accepted}
    problems += [f"manifest: accepted {k} not in any shard" for k in sorted(listed - keys)]
    problems += [f"manifest: sample {k} has no accepted row" for k in sorted(keys - listed)]
    # a repeated name is legitimately several rows (one accepted at most, the others rejected as duplicates)
    dup = Counter(r["key"] for r in accepted)
    problems += [f"manifest: key {k} accepted {c} times" for k, c in dup.items() if c > 1]
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return 2
    problems = verify_dir(args.folder)
    for line in problems:
        print(line)
    if not problems:
        sizes = json.loads((args.folder / schema.SIZES_FILE).read_text())
        print(f"ok: {sum(sizes.values())} samples in {len(sizes)} shards")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
