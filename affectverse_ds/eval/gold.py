"""Ground truth of a test split as the shards hold it: labels from the shards' JSON members and the
items the shard builder rejected (``manifest.parquet``), so every test item is accounted for."""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from affectverse_ds.benchmarks import Benchmark, Label, LabelTable
from affectverse_ds.data import schema
from affectverse_ds.data.loader import list_shards


@dataclass
class GoldSet:
    """The ground truth of one benchmark's test split as the shards hold it.

    Args:
        labels: name -> label of every test sample in the shards, plus the builder's rejected ones
            that have a label (scored as empty predictions).
        in_shards: names present in the shards.
        build_rejected: name -> reason, test items the shard builder rejected (``manifest.parquet``).
    """

    labels: LabelTable
    in_shards: list[str]
    build_rejected: dict[str, str] = field(default_factory=dict)


def label_from_json(data: dict | None) -> Label | None:
    """A :class:`Label` from the shard/manifest JSON (``emo``, ``val``, ``openset``); None when absent."""
    if not data:
        return None
    openset = data.get("openset")
    val = data.get("val")
    return Label(emo=data.get("emo"), val=float(val) if val is not None else None,
                 openset=tuple(openset) if openset is not None else None)


def read_gold(shard_dir: str | Path, bench: Benchmark, split: str | None = None) -> GoldSet:
    """Labels of a test split from its shards' JSON members (media bytes are skipped, not decoded),
    and the items the builder rejected from ``manifest.parquet`` when there is one."""
    split = split or bench.test_split
    labels: dict[str, Label] = {}
    rejected_labels: dict[str, str] = {}
    in_shards: list[str] = []
    for shard in list_shards(shard_dir, bench.name, [split]):
        with tarfile.open(shard.path) as tar:
            for member in tar:
                if not member.name.endswith("." + schema.META_EXT):
                    continue
                if member.size > schema.MAX_META_BYTES:  # declared size (a sparse member can claim gigabytes)
                    rejected_labels[member.name] = (f"unreadable metadata: declares {member.size} bytes, over "
                                                    f"the {schema.MAX_META_BYTES}-byte limit")
                    continue
                try:
                    meta = json.load(tar.extractfile(member))
                    problems = schema.validate_meta(meta)  # the loader's own check: both see the same samples
                    if problems:
                        raise ValueError("; ".join(problems))
                    label = label_from_json(meta["label"])
                    name = str(meta["name"])
                except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as err:
                    rejected_labels[member.name] = f"unreadable metadata: {err}"
                    continue
                in_shards.append(name)
                if label is not None:
                    labels[name] = label
    rejected = _manifest_rejected(Path(shard_dir), bench.name, split)
    for name, (label, _reason) in rejected.items():
        if label is not None and name not in labels:
            labels[name] = label
    return GoldSet(LabelTable(labels, rejected_labels), in_shards,
                   {name: reason for name, (_label, reason) in rejected.items()})


def _manifest_rejected(shard_dir: Path, benchmark: str, split: str) -> dict[str, tuple[Label | None, str]]:
    path = shard_dir / schema.MANIFEST_FILE
    if not path.is_file():
        return {}
    out = {}
    for row in pq.read_table(path).to_pylist():
        if row["benchmark"] != benchmark or row["split"] != split or row["status"] == "accepted":
            continue
        try:
            label = label_from_json(json.loads(row["label"])) if row.get("label") else None
        except (ValueError, TypeError):
            label = None
        out[str(row["name"])] = (label, str(row.get("reason") or ""))
    return out
