"""Peak memory of one hostile item against one ordinary item, side by side (issue #18, class 8).

    .venv/bin/python bench/hostile_memory.py [--audio-hours 4] [--flac-hours 2]

Each measurement runs in a fresh subprocess (``ru_maxrss`` is a high-water mark per process), which
imports the project, builds its input, records its peak RSS, then runs one call and records it again:
the difference is what the call itself added.

- builder: ``media.decode_clip`` of a 2 s clip with 2 s of audio, then of a 2 s clip whose audio track
  runs ``--audio-hours`` hours (MP4, FLAC audio);
- loader: ``loader.decode_sample`` of a 1 s sample, then of the same sample whose .flac member holds
  ``--flac-hours`` hours of audio (a few MB of FLAC).

Prints the added MB of each and the ratio hostile / ordinary.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys
sys.path.insert(0, {repo!r})
from affectverse_ds.tools.hostile_media import long_audio_clip, long_flac
what, arg, tmp = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if what == "builder":
    from affectverse_ds.data import media
    clip = long_audio_clip(tmp + "/clip.mp4", audio_seconds=arg)
    call = lambda: media.decode_clip(clip)
else:
    from affectverse_ds.data.loader import decode_sample
    from affectverse_ds.data.collator import SampleError
    from affectverse_ds.tools.fixture_shards import sample_record
    record = sample_record("meld", "train", 0, seconds=1.0)
    if arg > 1:
        record["flac"] = long_flac(arg)
    def call():
        try:
            decode_sample(record)
        except SampleError as err:
            return str(err)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = call()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"before_mb": before / 1024, "after_mb": after / 1024, "note": str(out)[:120]}}))
"""


def measure(what: str, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        code = CHILD.format(repo=str(REPO))
        proc = subprocess.run([sys.executable, "-c", code, what, str(seconds), tmp], capture_output=True,
                              text=True, check=True, cwd=REPO)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["added_mb"] = row["after_mb"] - row["before_mb"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audio-hours", type=float, default=4.0)
    p.add_argument("--flac-hours", type=float, default=2.0)
    args = p.parse_args()
    cases = [("builder", "2 s clip, 2 s audio", 2.0),
             ("builder", f"2 s clip, {args.audio_hours:g} h audio", args.audio_hours * 3600),
             ("loader", "1 s sample", 1.0),
             ("loader", f"1 s sample, {args.flac_hours:g} h FLAC member", args.flac_hours * 3600)]
    rows = []
    for what, label, seconds in cases:
        r = measure(what, seconds)
        rows.append(r)
        print(f"{what:8s} {label:34s} peak RSS {r['after_mb']:7.1f} MB, added by the call {r['added_mb']:7.1f} MB"
              + (f"  ({r['note']})" if r["note"] not in ("", "None") and "Clip" not in r["note"] else ""))
    for i, what in ((0, "builder"), (2, "loader")):
        base, hostile = rows[i]["after_mb"], rows[i + 1]["after_mb"]
        print(f"{what}: peak RSS hostile / ordinary = {hostile / base:.2f}")


if __name__ == "__main__":
    main()
