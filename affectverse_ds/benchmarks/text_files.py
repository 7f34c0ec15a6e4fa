"""Reading the benchmarks' text files (transcripts, label CSVs) one bounded line at a time.

A file is decoded as it is read and handed on one physical line at a time, each at most :data:`LINE_LIMIT`
characters: a longer line (a 200 MB field) is streamed past in chunks, keeping only its first and last
:data:`KEEP_CHARS` characters, so memory does not grow with it. :func:`read_csv_rows` turns such a line into a
row that carries its cause under :data:`ROW_PROBLEM` (file and line): the scanners reject that row's item with
the cause and build the others. FIFOs and devices are refused before anything is read (``open_regular``).
"""
from __future__ import annotations

import codecs
import csv
import io
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from affectverse_ds.bounded import open_regular

log = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"
LINE_LIMIT = 1 << 20  # characters of one physical line; real transcript and label rows are under a few KB
KEEP_CHARS = 1 << 16  # of an over-limit line, the characters kept at each end to recover its other fields
_CHUNK = 1 << 20  # characters read at a time while streaming past an over-limit line
ROW_PROBLEM = "\x00problem"  # key of a row that could not be read whole (NULs never reach a header)


def _stray_cp1252(err: UnicodeDecodeError) -> tuple[str, int]:
    """Decode error handler: an invalid byte 0x80-0x9F (a cp1252 quote or dash in an otherwise UTF-8
    file, as in MELD's pre-2020 CSVs) becomes the C1 character of that value, which the subtitle rule
    then maps and counts (``c1_control``); any other invalid byte becomes U+FFFD."""
    bad = err.object[err.start:err.end]
    return "".join(chr(b) if 0x80 <= b <= 0x9F else REPLACEMENT_CHAR for b in bad), err.end


codecs.register_error("affectverse_stray_cp1252", _stray_cp1252)


def decode_text(raw: bytes) -> str:
    """Bytes of a text file -> str, never raising.

    UTF-8 (with or without BOM) is what every benchmark ships; UTF-16 appears when a CSV
    went through a spreadsheet. A stray cp1252 punctuation byte becomes its C1 character (see
    :func:`_stray_cp1252`); other invalid bytes become U+FFFD, so one bad row costs that row's
    characters, not the file.
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace")
    return raw.decode("utf-8-sig", errors="affectverse_stray_cp1252")


def read_text(path: Path) -> str:
    return decode_text(Path(path).read_bytes())


@dataclass(frozen=True)
class LongLine:
    """A physical line over :data:`LINE_LIMIT` characters, of which only both ends were kept.

    Args:
        head: its first KEEP_CHARS characters.
        tail: its last KEEP_CHARS characters (line ending included).
        length: its length in characters.
        tail_quoted: the tail starts inside a quoted field (an odd number of quotes before it).
    """

    head: str
    tail: str
    length: int
    tail_quoted: bool

    @classmethod
    def of(cls, line: str) -> "LongLine":
        """The same view of a line held whole (one the csv module refused)."""
        tail = line[-KEEP_CHARS:]
        quoted = (line.count('"') - tail.count('"')) % 2 == 1
        return cls(line[:KEEP_CHARS], tail, len(line.rstrip("\r\n")), quoted)


def _open_text(path: Path) -> io.TextIOWrapper:
    """``path`` decoded as :func:`decode_text` would, newlines untranslated (as the csv module wants)."""
    raw = open_regular(path)
    if raw.peek(2)[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return io.TextIOWrapper(raw, encoding="utf-16", errors="replace", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="affectverse_stray_cp1252", newline="")


def _stream_past(f: io.TextIOWrapper, start: str) -> LongLine:
    """The rest of the line ``start`` began, read in chunks; only its ends and its quote count are kept."""
    head, tail, length, quotes = start[:KEEP_CHARS], start[-KEEP_CHARS:], len(start), start.count('"')
    while not tail.endswith(("\n", "\r")):
        chunk = f.readline(_CHUNK)
        if not chunk:
            break
        length += len(chunk)
        quotes += chunk.count('"')
        tail = (tail + chunk)[-KEEP_CHARS:]
    length -= len(tail) - len(tail.rstrip("\r\n"))  # the line ending is not counted
    return LongLine(head.replace("\x00", ""), tail.replace("\x00", ""), length, (quotes - tail.count('"')) % 2 == 1)


def physical_lines(path: Path) -> Iterator[str | LongLine]:
    """Each physical line of the text file ``path`` (line ending kept, NULs dropped); a line over
    :data:`LINE_LIMIT` characters comes as a :class:`LongLine`. Refuses a FIFO or device (BoundedReadError)."""
    with _open_text(path) as f:
        while line := f.readline(LINE_LIMIT + 1):
            if len(line) <= LINE_LIMIT or line.endswith(("\n", "\r")):
                yield line.replace("\x00", "")
            else:
                yield _stream_past(f, line)


def _fields(text: str) -> list[str]:
    """Fields of one line parsed alone; [] when even that fails."""
    try:
        return next(csv.reader([text]), [])
    except csv.Error:
        return []


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (header names stripped), tolerant of bad bytes, in bounded memory.

    A malformed row (an unterminated quote that would swallow the rest of the file) gets a warning naming
    its line, and from that row on every physical line is read as one row, so the rows after it are not
    merged into one field and lost; a malformed row of one line (a stray quote) is read alone, leniently.
    A line the csv module refuses even alone (a field over its 128 KB limit) or one over :data:`LINE_LIMIT`
    (never held whole) keeps the fields that can be recovered from its ends and carries the cause under
    :data:`ROW_PROBLEM` (file, line): its item is rejected with that reason, the other rows are read.
    """
    name = Path(path).name
    lines = enumerate(physical_lines(path), 1)  # (line number, line)
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    pending: list[tuple[int, str | LongLine]] = []  # the lines of the row the csv module is reading
    cut_short = False  # the csv module was stopped at an over-limit line inside a quoted field

    def add(row: list[str], problem: str | None = None) -> None:
        nonlocal header
        if header is None:
            header = [h.strip() for h in row]
        elif row or problem:
            rows.append({key: (row[i] if i < len(row) else "") for i, key in enumerate(header)})
            if problem:
                rows[-1][ROW_PROBLEM] = problem

    def add_ends(n: int, line: LongLine, cause: str) -> None:
        """A row from the fields at both ends of a line (the long field between is never parsed), with its cause.
        Fields after the cut are matched to the last columns, so a name or split column there is recovered."""
        head = _fields(line.head)[:-1]  # the last field is cut: dropped
        tail = _fields(('"' if line.tail_quoted else "") + line.tail)[1:]  # the first field is cut: dropped
        width = len(header or [])
        fields = head + [""] * (width - len(head) - len(tail)) + tail if len(head) + len(tail) < width else head
        log.warning("%s: line %d not read: %s", path, n, cause)
        add(fields, f"{name} line {n}: {cause}")

    def add_long(n: int, line: LongLine) -> None:
        add_ends(n, line, f"line of {line.length} characters is over the {LINE_LIMIT}-character limit")

    def add_alone(n: int, line: str | LongLine) -> None:
        if isinstance(line, LongLine):
            return add_long(n, line)
        try:
            add(next(csv.reader([line]), []))
        except csv.Error as err:
            add_ends(n, LongLine.of(line), f"{err} ({len(line)} characters)")

    def feed() -> Iterator[str]:
        nonlocal cut_short
        for n, line in lines:
            if isinstance(line, LongLine):
                if not pending:  # between rows: the line is a row of its own
                    add_long(n, line)
                    continue
                pending.append((n, line))
                cut_short = True  # ends the input inside a quoted field: the csv module says so
                return
            pending.append((n, line))
            yield line

    reader = csv.reader(feed(), strict=True)
    try:
        while True:
            try:
                row = next(reader, None)
            except csv.Error as err:
                if len(pending) != 1 or cut_short:
                    raise
                log.warning("%s: malformed CSV row at line %d (%s); read alone", path, pending[0][0], err)
                add_alone(*pending[0])  # the csv module starts afresh at the next line
            else:
                if row is None:
                    break
                add(row)
            pending.clear()
    except csv.Error as err:
        log.warning("%s: malformed CSV row at line %d (%s); from there on each line is read as one row",
                    path, pending[0][0], err)
        for n, line in itertools.chain(pending, lines):
            add_alone(n, line)
    return rows


def row_problem(row: dict[str, str]) -> str | None:
    """Why a row of :func:`read_csv_rows` could not be read whole (file and line), or None."""
    return row.get(ROW_PROBLEM)
