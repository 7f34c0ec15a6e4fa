"""The shared reading helpers: tolerant text/CSV decoding, media indexing, duplicates."""
from __future__ import annotations

import codecs

from affectverse_ds.benchmarks.base import Label, RawItem
from affectverse_ds.benchmarks.layouts import index_media, mark_duplicates, read_transcript, subtitle_note
from affectverse_ds.benchmarks.text_files import decode_text, read_csv_rows


def test_decode_text_handles_bom_utf16_and_bad_bytes():
    assert decode_text(codecs.BOM_UTF8 + "name,a\n".encode()) == "name,a\n"
    assert decode_text("name,中文\n".encode("utf-16")) == "name,中文\n"
    text = decode_text(b"x,caf\xe9 ok\n")
    assert text == "x,caf\ufffd ok\n"


def test_read_csv_rows_survives_garbage(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"name,english\na,hello\x00 there\nb,\"unterminated\n")
    rows = read_csv_rows(path)
    assert rows[0] == {"name": "a", "english": "hello there"}
    path.write_bytes(bytes(range(256)) * 20)  # not a CSV at all
    read_csv_rows(path)  # no exception


def test_read_transcript_missing_file_or_column(tmp_path):
    assert read_transcript(tmp_path / "absent.csv", "english") == {}
    path = tmp_path / "t.csv"
    path.write_text("name,chinese\na,你好\na,second\nb,\n", encoding="utf-8")
    assert read_transcript(path, "english") == {}
    assert read_transcript(path, "chinese") == {"a": "你好", "b": ""}  # first row of a name wins


def test_index_media_prefers_ext_order_and_skips_appledouble(tmp_path):
    for name in ("a.mp4", "a.avi", "b.AVI", "._c.mp4", "d.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = index_media(tmp_path, (".avi", ".mp4"))
    assert {k: v.name for k, v in found.items()} == {"a": "a.avi", "b": "b.AVI"}
    assert index_media(tmp_path / "absent", (".mp4",)) == {}


def test_mark_duplicates_rejects_later_entries_only():
    items = [RawItem("x", "test", Label(emo="joy")), RawItem("y", "test", Label(emo="joy")),
             RawItem("x", "test", Label(emo="fear")), RawItem("x", "test", Label(emo="anger"))]
    mark_duplicates(items)
    assert [i.reject is None for i in items] == [True, True, False, False]
    assert "duplicate name 'x'" in items[2].reject and items[2].label is None


def test_subtitle_note():
    assert subtitle_note(RawItem("a", "t", None, subtitle="")) == "empty subtitle"
    assert "invalid UTF-8" in subtitle_note(RawItem("a", "t", None, subtitle="caf\ufffd"))
    assert subtitle_note(RawItem("a", "t", None, subtitle="fine")) is None


def test_read_csv_rows_decodes_as_decode_text_line_by_line(tmp_path):
    """The bounded line reader decodes like decode_text: BOMs, UTF-16, CRLF, a stray cp1252 byte, quoted newlines."""
    text = 'name,english\r\na,"two\r\nlines"\r\nb,caf\u00e9 \u2019ok\u2019\r\n'
    path = tmp_path / "t.csv"
    expect = [{"name": "a", "english": "two\r\nlines"}, {"name": "b", "english": "caf\u00e9 \u2019ok\u2019"}]
    for raw in (text.encode(), codecs.BOM_UTF8 + text.encode(), text.encode("utf-16"), text.encode("utf-16-be")):
        path.write_bytes(codecs.BOM_UTF16_BE + raw if raw.startswith(b"\x00") else raw)
        assert read_csv_rows(path) == expect, raw[:4]
    path.write_bytes(text.replace("\u2019", "\x92").encode("utf-8").replace(b"\xc2\x92", b"\x92"))
    assert read_csv_rows(path)[1]["english"] == "caf\u00e9 \x92ok\x92"  # C1 char, mapped later by the subtitle rule
