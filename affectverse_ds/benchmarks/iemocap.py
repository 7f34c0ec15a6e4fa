"""IEMOCAP 4-way (excited merged into happy). Sessions 1-4 train, Session 5 test (name[4] is the session)."""
import logging
import re
from pathlib import Path

from affectverse_ds.benchmarks.base import (
    DISCRETE_QUESTION, Benchmark, Label, LayoutNotFound, RawItem, SplitAbsent, class_from_index, emotion_target, npz_labels,
)
from affectverse_ds.benchmarks.layouts import (
    ProcessedLayout, entry_value, finish, index_media, mark_duplicates, missing_media, register_processed,
    reject, shown,
)
from affectverse_ds.benchmarks.text_files import LINE_LIMIT, LongLine, physical_lines

log = logging.getLogger(__name__)

CLASSES = ("happy", "sad", "neutral", "anger")
# `subvideo-tgt/` holds the utterance clips cut to the target speaker, as .avi.
LAYOUT = ProcessedLayout(video_dirs=("subvideo-tgt",), audio_dirs=("subaudio", "audio"), video_exts=(".avi", ".mp4"))

SESSIONS = {"train": (1, 2, 3, 4), "test": (5,)}
# EmoEvaluation category -> 4-way class. Excited is merged into happy, as in MER-UniBench's label_4way.npz
# (hap+exc+sad+neu+ang over the five sessions is exactly its 5531 entries).
FOUR_WAY = {"hap": "happy", "exc": "happy", "sad": "sad", "neu": "neutral", "ang": "anger"}
OTHER_CATEGORIES = {
    "fru": "frustrated", "sur": "surprised", "fea": "fearful", "dis": "disgusted", "oth": "other",
    "xxx": "annotators did not agree",
}

# Which half of the dialog video shows the actor wearing the motion-capture markers, per session.
# Why a property of the marker wearer and not of gender: the release README says only one actor per
# recording wears markers, and the dialog id's letter names that actor (Ses01F_*: the female). The
# markers can only be tracked inside the capture area, so the wearer presumably always takes the same
# seat in front of the same camera, and F and M swap seats between Ses0xF and Ses0xM recordings. One
# public IEMOCAP preprocessing script crops the same way (left 360 of 720 px for the wearer, right
# half for the other actor). This is NOT checked against the videos (they are licensed and not here):
# if a session turns out to be mirrored, correct its entry.
MARKER_WEARER_SIDE = {1: "left", 2: "left", 3: "left", 4: "left", 5: "left"}

_UTTERANCE_ID = re.compile(r"^Ses(\d\d)([FM])_\S+_([FM])\d+$")
# `[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]`
_EVAL_LINE = re.compile(r"^\[\s*(\S+)\s*-\s*(\S+)\s*\]\s+(\S+)\s+(\S+)")
# `Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`
_TRANSCRIPT_LINE = re.compile(r"^(\S+)\s+\[[^\]]*\]:\s?(.*)$")


def _corpus(split: str):
    if split == "train":
        return "whole_corpus", lambda name: name[4] in "1234"
    if split == "test":
        return "whole_corpus", lambda name: name[4] == "5"
    raise KeyError(f"iemocap has splits train (Sessions 1-4) and test (Session 5), not {split!r}")


def _label(entry: dict, name: str) -> Label:
    return Label(emo=class_from_index(CLASSES, entry_value(entry, "emo", name), name))


def speaker_crop(utterance_id: str) -> str | None:
    """'left' / 'right': the half of the dialog video showing the utterance's speaker; None for a malformed id."""
    match = _UTTERANCE_ID.match(utterance_id)
    if match is None:
        return None
    session, wearer, speaker = int(match[1]), match[2], match[3]
    side = MARKER_WEARER_SIDE.get(session, "left")
    return side if speaker == wearer else ("right" if side == "left" else "left")


def four_way_label(category: str, name: str) -> tuple[Label | None, str | None]:
    """EmoEvaluation category -> (Label, None), or (None, reason) for categories outside the 4 classes."""
    if category in FOUR_WAY:
        return Label(emo=FOUR_WAY[category]), None
    if category in OTHER_CATEGORIES:
        return None, f"{name}: category {category!r} ({OTHER_CATEGORIES[category]}) is outside the 4-way classes"
    return None, f"{name}: unknown IEMOCAP category {category!r}"


def too_long(path: Path, number: int, line: LongLine) -> str:
    return f"{path.name} line {number}: line of {line.length} characters is over the {LINE_LIMIT}-character limit"


def read_transcription(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(``utterance id -> text``, ``utterance id -> why its line is unreadable``) of one dialog's transcription
    file (lines without a time stamp are skipped). Read one bounded line at a time: an over-limit line is streamed
    past (``text_files.physical_lines``) and its utterance, named by the line's start, gets the reason."""
    if not path.is_file():
        return {}, {}
    out: dict[str, str] = {}
    problems: dict[str, str] = {}
    for number, line in enumerate(physical_lines(path), 1):
        if isinstance(line, LongLine):
            name = line.head.split(maxsplit=1)[0] if line.head.strip() else ""
            if name:
                problems.setdefault(name, f"transcript unreadable: {too_long(path, number, line)}")
            else:
                log.warning("%s", too_long(path, number, line))
            continue
        match = _TRANSCRIPT_LINE.match(line.strip())
        if match:
            out.setdefault(match[1], match[2].strip())
    return out, problems


def _evaluation_items(
    path: Path, split: str, video: Path | None, texts: tuple[dict[str, str], dict[str, str]], video_dir: str,
) -> list[RawItem]:
    """The summary lines (``[start - end]  id  cat  [V, A, D]``) of one EmoEvaluation file as items, read one
    bounded line at a time; a summary line over the limit is parsed from its first characters and rejected."""
    items = []
    texts, text_problems = texts
    for number, physical in enumerate(physical_lines(path), 1):
        line = physical.head if isinstance(physical, LongLine) else physical.rstrip("\r\n")
        if not line.startswith("["):
            continue  # annotator lines (C-E1:, A-E3: ...) and the % header
        match = _EVAL_LINE.match(line)
        if match is None:
            log.warning("%s: unreadable evaluation line %d %r", path, number, line[:200])
            continue
        start, end, name, category = match.groups()
        label, reason = four_way_label(category, name)
        item = RawItem(name=name, split=split, label=label, reject=reason, video=video,
                       subtitle=texts.get(name, ""), crop=speaker_crop(name))
        if isinstance(physical, LongLine):
            reject(item, f"label row unreadable: {too_long(path, number, physical)}")
        if name in text_problems:
            reject(item, text_problems[name])
        try:
            item.segment = (float(start), float(end))
        except ValueError:
            reject(item, f"{name}: times {start!r} - {end!r} are not numbers")
        if item.segment is not None and not item.segment[1] > item.segment[0]:
            reject(item, f"{name}: empty segment [{start} - {end}]")
        if item.crop is None:
            reject(item, f"{name}: utterance id does not name session and speaker")
        if video is None:
            reject(item, missing_media(video_dir, path.stem, (".avi",)))
        items.append(item)
    return items


def _session_root(root: Path) -> Path:
    """The folder holding ``Session1..5``: ``root`` itself or the release's ``IEMOCAP_full_release/``."""
    nested = root / "IEMOCAP_full_release"
    return nested if not any(root.glob("Session[1-5]")) and nested.is_dir() else root


def scan_official(root: Path, split: str) -> list[RawItem]:
    """Every labelled turn of the split's sessions, cut from its dialog video by time, speaker half kept."""
    if split not in SESSIONS:
        raise SplitAbsent(f"iemocap has splits train (Sessions 1-4) and test (Session 5), not {split!r}")
    root = _session_root(Path(root))
    dialogs = [d for s in SESSIONS[split] if (d := root / f"Session{s}" / "dialog").is_dir()]
    if not dialogs:
        raise LayoutNotFound("IEMOCAP sessions", root, tuple(f"Session{s}/dialog" for s in SESSIONS[split]))
    items: list[RawItem] = []
    for dialog_dir in dialogs:
        videos = index_media(dialog_dir / "avi" / "DivX", (".avi",))
        video_dir = shown(dialog_dir / "avi" / "DivX", root)
        for path in sorted((dialog_dir / "EmoEvaluation").glob("*.txt")):
            if path.name.startswith("._"):
                continue  # macOS metadata files inside the release archive
            texts = read_transcription(dialog_dir / "transcriptions" / path.name)
            items += _evaluation_items(path, split, videos.get(path.stem), texts, video_dir)
    mark_duplicates(items)
    return finish(items, "iemocap.official: Session*/dialog/{EmoEvaluation,transcriptions,avi/DivX}")


BENCHMARK = register_processed(Benchmark(
    name="iemocap", group="discrete", process_dir="iemocap-process", classes=CLASSES,
    test_split="test", train_splits=("train",),
    load_labels=npz_labels("label_4way.npz", _corpus, _label),
    question=DISCRETE_QUESTION, target=emotion_target,
), LAYOUT, official=scan_official)
