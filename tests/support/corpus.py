"""The adversarial corpus: hostile inputs the project generates itself (issue #18).

Shard samples (:data:`SAMPLE_KINDS`): each kind turns one good fixture sample (``fixture_shards.sample_record``,
the tests' own) into bytes a shard member can hold but the contract forbids. :func:`write_corpus_shards` interleaves
them with good samples in real tar shards, with a ``sizes.json`` that counts every sample,
and records which key is which (``corpus.json``).

Raw media for the builder: ``affectverse_ds.tools.hostile_media.long_audio_clip``, a short video whose audio track
runs for hours (in the package because bench/hostile_memory.py measures it too).

Everything is made from code with fixed seeds, so a run is reproducible and nothing is downloaded.
"""
from __future__ import annotations

import io
import json
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import webdataset as wds
from PIL import Image

from affectverse_ds.data import schema
from affectverse_ds.tools.fixture_shards import sample_record
from affectverse_ds.tools.hostile_media import long_flac

CORPUS_FILE = "corpus.json"


# ----------------------------------------------------------------------------- hostile member bytes


def _meta(record: dict) -> dict:
    return json.loads(record[schema.META_EXT])


def _with_meta(record: dict, **changes) -> dict:
    meta = _meta(record)
    for key, value in changes.items():
        node, *path = key.split("__")
        if path:
            meta[node][path[0]] = value
        else:
            meta[key] = value
    return {**record, schema.META_EXT: json.dumps(meta).encode()}


def _json_bytes(record: dict, data: bytes) -> dict:
    return {**record, schema.META_EXT: data}


def _sof_patched(jpeg: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) claims ``width x height``; the scan data stays the small one."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


def _image(mode: str, size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format=fmt)
    return buf.getvalue()


def _flac(pcm: np.ndarray, rate: int = schema.SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


class _RunsCode:
    """A pickle payload that would run code when unpickled (it must never be)."""

    def __reduce__(self):
        return (print, ("adversarial pickle ran",))


def _frames(record: dict) -> list[str]:
    return sorted(k for k in record if schema.FRAME_EXT_RE.match(k))


def _first_frame(record: dict, data: bytes) -> dict:
    return {**record, _frames(record)[0]: data}


LONG_FLAC_SECONDS = 20 * 60  # 20 min of audio in a few hundred KB (bench/hostile_memory.py uses hours)

# kind -> (what it is, how a good record becomes it)
SAMPLE_KINDS: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "json_null": ("metadata is JSON null", lambda r: _json_bytes(r, b"null")),
    "json_number": ("metadata is a JSON number", lambda r: _json_bytes(r, b"42")),
    "json_list": ("metadata is a JSON list", lambda r: _json_bytes(r, b"[1, 2, 3]")),
    "json_string": ("metadata is a JSON string", lambda r: _json_bytes(r, b'"meta"')),
    "json_empty": ("metadata member is empty", lambda r: _json_bytes(r, b"")),
    "json_invalid": ("metadata is not JSON", lambda r: _json_bytes(r, b"{'name': broken")),
    "json_not_utf8": ("metadata bytes are not UTF-8", lambda r: _json_bytes(r, b'{"name": "\xff\xfe"}')),
    "json_deep_100k": ("metadata nested 100 000 levels (RecursionError in json)",
                       lambda r: _json_bytes(r, b"[" * 100_000 + b"]" * 100_000)),
    "json_deep_field": ("a label field nested 500 levels (parses, then recursion downstream)",
                        lambda r: _with_meta(r, label__openset=json.loads("[" * 500 + "]" * 500))),
    "json_huge": ("metadata member of 3 MB", lambda r: _with_meta(r, subtitle="x" * (3 << 20))),
    "meta_missing_field": ("metadata without 'text'",
                           lambda r: _json_bytes(r, json.dumps({k: v for k, v in _meta(r).items()
                                                                if k != "text"}).encode())),
    "meta_wrong_types": ("n_frames is a string, label.emo a number",
                         lambda r: _with_meta(r, n_frames="3", label__emo=5)),
    "meta_nan_duration": ("duration NaN (JSON allows it)", lambda r: _json_bytes(
        r, json.dumps({**_meta(r), "duration": float("nan")}).encode())),
    "meta_inf_val": ("label.val Infinity", lambda r: _json_bytes(
        r, json.dumps({**_meta(r), "label": {"emo": None, "val": float("inf"), "openset": None}}).encode())),
    "meta_huge_counts": ("n_frames 10**9 and audio_samples 10**12",
                         lambda r: _with_meta(r, n_frames=10 ** 9, audio_samples=10 ** 12)),
    "meta_bad_modalities": ("modalities without 'audio'",
                            lambda r: _with_meta(r, modalities={"video": True, "text": True})),
    "meta_unknown_label_field": ("label has a field 'arousal'", lambda r: _with_meta(r, label__arousal=1.0)),
    "missing_json": ("no metadata member", lambda r: {k: v for k, v in r.items() if k != schema.META_EXT}),
    "missing_frame": ("one frame member fewer than n_frames",
                      lambda r: {k: v for k, v in r.items() if k != _frames(r)[-1]}),
    "missing_audio": ("audio_samples > 0 but no .flac", lambda r: {k: v for k, v in r.items() if k != "flac"}),
    "unexpected_member": ("an extra .npy member", lambda r: {**r, "npy": b"\x93NUMPY garbage"}),
    "pickle_member": ("a .pkl member whose pickle would run code",
                      lambda r: {**r, "pkl": pickle.dumps(_RunsCode())}),
    "jpeg_bomb_error": ("a JPEG header claiming 60000x60000 (DecompressionBombError)",
                        lambda r: _first_frame(r, _sof_patched(r[_frames(r)[0]], 60000, 60000))),
    "jpeg_bomb_warning": ("a JPEG header claiming 10000x10000 (DecompressionBombWarning)",
                          lambda r: _first_frame(r, _sof_patched(r[_frames(r)[0]], 10000, 10000))),
    "jpeg_truncated": ("first frame cut to a third", lambda r: _first_frame(r, r[_frames(r)[0]][:300])),
    "jpeg_garbage": ("first frame is random bytes",
                     lambda r: _first_frame(r, np.random.default_rng(1).bytes(2000))),
    "frame_png": ("a PNG where a JPEG belongs", lambda r: _first_frame(r, _image("RGB", (56, 56), "PNG"))),
    "frame_gray": ("a grayscale JPEG frame", lambda r: _first_frame(r, _image("L", (56, 56), "JPEG"))),
    "frame_not_square": ("a 64x32 frame", lambda r: _first_frame(r, _image("RGB", (64, 32), "JPEG"))),
    "audio_garbage": ("the .flac is random bytes", lambda r: {**r, "flac": np.random.default_rng(2).bytes(5000)}),
    "audio_stereo": ("stereo FLAC", lambda r: {**r, "flac": _flac(np.zeros((_meta(r)["audio_samples"], 2),
                                                                          np.float32))}),
    "audio_44k": ("FLAC at 44.1 kHz", lambda r: {**r, "flac": _flac(np.zeros(_meta(r)["audio_samples"],
                                                                             np.float32), 44100)}),
    "audio_wav": ("a WAV file in the .flac member", lambda r: {**r, "flac": _wav(_meta(r)["audio_samples"])}),
    "audio_hours": (f"a small FLAC holding {LONG_FLAC_SECONDS // 60} min of audio",
                    lambda r: {**r, "flac": long_flac(LONG_FLAC_SECONDS)}),
    "audio_short": ("FLAC with half the samples the metadata says",
                    lambda r: {**r, "flac": _flac(np.zeros(_meta(r)["audio_samples"] // 2, np.float32))}),
}


# kinds that make only the video unusable: the loader keeps the sample for settings without video
FRAME_KINDS = frozenset({"jpeg_bomb_error", "jpeg_bomb_warning", "jpeg_truncated", "jpeg_garbage", "frame_png",
                         "frame_gray", "frame_not_square"})


def _wav(n: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(n, np.float32), schema.SAMPLE_RATE, format="WAV")
    return buf.getvalue()


# ----------------------------------------------------------------------------- shards


@dataclass
class Corpus:
    """What :func:`write_corpus_shards` wrote: keys and names of the good samples, keys of the bad ones."""

    folder: Path
    good: dict[str, str]  # key -> sample name
    bad: dict[str, str]  # key -> kind
    shards: list[Path]

    @property
    def total(self) -> int:
        return len(self.good) + len(self.bad)


def write_corpus_shards(out: str | Path, *, benchmark: str = "meld", split: str = "train", n_good: int = 8,
                        kinds: list[str] | None = None, n_shards: int = 2, frame_size: int = 56) -> Corpus:
    """Good and hostile samples interleaved over ``n_shards`` tar shards, counted in ``sizes.json``.

    Args:
        n_good: good samples (sample indices 0..n_good-1).
        kinds: hostile kinds (default: all of :data:`SAMPLE_KINDS`), one sample each.
        frame_size: frame side of the good samples (56 keeps the test fast; the contract allows <= 224).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kinds = list(SAMPLE_KINDS) if kinds is None else kinds
    records, good, bad = [], {}, {}
    for i in range(n_good + len(kinds)):
        record = sample_record(benchmark, split, i, seconds=1.0, frame_size=frame_size)
        slot = i - n_good
        if 0 <= slot:
            kind = kinds[slot]
            record = SAMPLE_KINDS[kind][1](record)
            bad[record["__key__"]] = kind
        else:
            good[record["__key__"]] = _meta(record)["name"]
        records.append(record)
    order = np.random.default_rng(7).permutation(len(records))
    per_shard = np.array_split(order, n_shards)
    sizes, shards = {}, []
    for s, idx in enumerate(per_shard):
        path = out / schema.SHARD_PATTERN.format(benchmark=benchmark, split=split, index=s)
        with wds.TarWriter(str(path)) as sink:
            for i in idx:
                sink.write(records[i])
        sizes[path.name] = len(idx)
        shards.append(path)
    (out / schema.SIZES_FILE).write_text(json.dumps(sizes, indent=1))
    (out / CORPUS_FILE).write_text(json.dumps({"good": good, "bad": bad}, indent=1))
    return Corpus(out, good, bad, shards)


# ----------------------------------------------------------------------------- hostile YAML (issue #26)


def _alias_bomb(levels: int = 9, fan: int = 10) -> bytes:
    """Billion laughs: each level lists the previous one ``fan`` times; ``fan ** levels`` strings once expanded
    (10^9 here) from a 400-byte file. The value sits under ``train.lr`` so a float check would format it."""
    lines = ['l0: &l0 "' + "ha" * 8 + '"']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]")
    return ("\n".join(lines) + f"\ntrain:\n  lr: *l{levels - 1}\n").encode()


def _merge_bomb(levels: int = 9) -> bytes:
    """The same through YAML merge keys (``<<``), which the constructor expands into new dicts."""
    lines = ["m0: &m0 {a: 1, b: 2}"]
    for i in range(1, levels):
        lines.append(f"m{i}: &m{i} " + "{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(10)) + "}")
    return ("\n".join(lines) + f"\ntrain:\n  <<: *m{levels - 1}\n").encode()


# kind -> (what it is, the bytes of a config file); every one must be a one-line ConfigError naming the file
CONFIG_KINDS: dict[str, tuple[str, bytes]] = {
    "python_object_tag": ("!!python/object/apply:os.system (would run a shell command)",
                          b'train:\n  out_dir: !!python/object/apply:os.system ["echo pwned > PWNED"]\n'),
    "python_name_tag": ("!!python/name:builtins.eval", b"train:\n  lr: !!python/name:builtins.eval\n"),
    "custom_tag": ("a local tag (!include)", b"train: !include other.yaml\n"),
    "alias_bomb": ("billion laughs under train.lr (10^9 strings expanded)", _alias_bomb()),
    "merge_bomb": ("billion laughs through << merge keys", _merge_bomb()),
    "alias_cycle": ("an anchor that contains its own alias", b"train: &t {out_dir: [*t]}\n"),
    "deep_100k": ("a value nested 100 000 levels", b"train: " + b"[" * 100_000 + b"]" * 100_000 + b"\n"),
    "not_utf8": ("latin-1 bytes", b"train:\n  out_dir: caf\xe9\n"),
    "nul_byte": ("a NUL character", b"train:\n  out_dir: a\x00b\n"),
    "huge_int": ("an integer of 10 000 digits", b"train:\n  seed: 1" + b"0" * 10_000 + b"\n"),
    "oversize": ("a 2 MB comment", b"#" + b"x" * (2 << 20) + b"\n"),
    "two_documents": ("two YAML documents", b"train: {}\n---\ntrain: {}\n"),
    "non_finite_lr": ("train.lr: .inf", b"train:\n  lr: .inf\n"),
    "non_finite_lambda": ("ewm.lambda_img: .inf", b"ewm:\n  lambda_img: .inf\n"),
    "nan_grad_clip": ("train.grad_clip: .nan", b"train:\n  grad_clip: .nan\n"),
    "overflow_float": ("train.lr: 1e999 (reads as inf)", b"train:\n  lr: 1e999\n"),
    "numeric_keys": ("a section keyed by a number", b"1: {}\ntrain: {}\n"),
}


# ----------------------------------------------------------------------------- archives and special files (issue #26)


def npz_with_inflating_member(path: str | Path, inflated_mb: int = 512) -> Path:
    """A MER-style label ``.npz`` (one pickled dict) plus an unused member of ``inflated_mb`` MB of zeros,
    written in chunks: the file is ~0.5 MB, the member inflates to the full size."""
    import zipfile

    path = Path(path)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (inflated_mb << 20,)})
    labels = io.BytesIO()
    np.save(labels, np.array({"train_corpus": {"a": {"emo": "happy", "val": 1.0}}}, dtype=object),
            allow_pickle=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("label.npy", labels.getvalue())
        with zf.open("unused.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(inflated_mb):
                member.write(chunk)
    return path


# ----------------------------------------------------------------------------- an oversized CSV field (issue #26)

# A comma and a doubled quote in every unit: the quoting must be followed across the whole field to find the
# columns after it.
_FIELD_UNIT = 'lorem, ""ipsum"" '


def inflate_csv_field(path: str | Path, row: int, column: str, n_chars: int) -> dict[str, str]:
    """Rewrite the CSV at ``path`` (a fixture's, one line per row) so data row ``row`` (0-based, physical line
    ``row + 2``) holds about ``n_chars`` characters in ``column``, written in 1 MB pieces, never held whole.
    Returns that row as it was (a dict by column), to name the item the scanner should reject."""
    import csv

    path = Path(path)
    header, *rows = csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
    col = header.index(column)

    def line(cells: list[str]) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(cells)
        return out.getvalue()

    victim = rows[row]
    before, after = line(victim[:col]), line(victim[col + 1:])
    piece = _FIELD_UNIT * (min(n_chars, 1 << 20) // len(_FIELD_UNIT))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(line(cells) + "\n" for cells in [header, *rows[:row]])
        f.write(before + ("," if col else "") + '"')
        for _ in range(-(-n_chars // len(piece))):  # at least n_chars
            f.write(piece)
        f.write('"' + ("," if col < len(header) - 1 else "") + after + "\n")
        f.writelines(line(cells) + "\n" for cells in rows[row + 1:])
    return dict(zip(header, victim))
