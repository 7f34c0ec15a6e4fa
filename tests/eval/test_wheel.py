"""G_w from the wheel tables: hand-checked on tiny tables, and the real tables' documented quirks."""
from __future__ import annotations

import shutil

import pytest

from affectverse_ds.eval.wheel import load_wheels, read_format_table, read_synonym_table, read_wheel


# ----------------------------------------------------------------------------- tiny tables

def test_format_table_maps_a_form_to_every_row_listing_it(tiny_wheel_dir):
    table = read_format_table(tiny_wheel_dir / "format.csv")
    assert table["anger"] == {"angry", "anger"}
    assert table["happily"] == {"happy"}
    assert table["at a loss"] == {"at a loss"}


def test_synonym_table_is_lower_cased_and_maps_wheel_words_to_themselves(tiny_wheel_dir):
    table = read_synonym_table(tiny_wheel_dir / "synonym.xlsx")
    assert table["happy"] == {"happy"}  # written 'Happy'
    assert table["joy"] == {"happy"}
    assert table["fear"] == {"scared"}
    assert table["fearless"] == {"brave"}


def test_wheel_fills_blank_level1_strips_and_later_rows_win(tiny_wheel_dir):
    clusters = read_wheel(tiny_wheel_dir / "wheel1.xlsx")
    assert clusters["happy"] == "happy"  # ' Happy ' in the file
    assert clusters["cheerful"] == "happy"  # blank level-1 cell continues the cluster above
    assert clusters["confused"] == "scared"  # listed under Sad first, then under Scared


@pytest.mark.parametrize("word, expected", [
    ("happiness", ("happy", "joy", "happy", "joy", "joy")),
    ("joyful", ("happy", "joy", "happy", "joy", "joy")),
    # candidates {brave, scared} are tried alphabetically: brave wins where present
    ("fear", ("happy", "fear", None, "fear", "fear")),
    ("anger", ("mad", "anger", None, "anger", "anger")),
    ("at a loss", ("scared", None, None, None, None)),
    ("don’t care", ("mad", None, None, None, None)),
    ("calm", ("happy", None, None, None, None)),  # peaceful is in the Neutral cluster of wheel 3
    ("  SAD ", ("sad", "sadness", "sad", "sadness", "sadness")),
    ("worry", ("scared", "fear", None, "fear", "fear")),
    ("unknownword", (None,) * 5),
    ("neutral", (None,) * 5),
])
def test_group_on_tiny_tables(tiny_wheels, word, expected):
    assert tuple(tiny_wheels.group(word, w) for w in range(5)) == expected


def test_empty_word_is_dropped_although_the_table_maps_it(tiny_wheels):
    # format.csv's 'no words' row has an empty format list, so '' is a surface form
    assert tiny_wheels.candidates("") == ["surprised"]
    assert tiny_wheels.group("", 0) is None
    assert tiny_wheels.group("   ", 0) is None


def test_group_set_and_group_all(tiny_wheels):
    assert tiny_wheels.group_set(["happy", "joyful", "sad", "bogus"], 0) == {"happy", "sad"}
    assert tiny_wheels.group_set([], 0) == frozenset()
    assert tiny_wheels.group_all(["fear"]) == ({"happy"}, {"fear"}, frozenset(), {"fear"}, {"fear"})


def test_surface_forms_exclude_the_empty_form(tiny_wheels):
    forms = tiny_wheels.surface_forms()
    assert "" not in forms and "at a loss" in forms and "happily" in forms


def test_missing_table_file_is_reported(tiny_wheel_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_wheel_dir, partial)
    (partial / "wheel5.xlsx").unlink()
    with pytest.raises(FileNotFoundError, match="wheel5.xlsx"):
        load_wheels(partial)


# ----------------------------------------------------------------------------- the real tables

def test_real_table_sizes(real_wheels):
    assert len(real_wheels.surface_to_base) == 7386
    assert len({b for bases in real_wheels.surface_to_base.values() for b in bases}) == 1255
    wheel_words = {w for words in real_wheels.base_to_wheel_words.values() for w in words}
    assert len(wheel_words) == 253
    assert wheel_words == set().union(*(set(c) for c in real_wheels.clusters))


def test_real_fear_lands_in_a_joyful_cluster_on_four_wheels(real_wheels):
    # the quirk documented in data/README.md: 'fear' -> 'fearless' -> a joyful cluster
    assert [real_wheels.group("fear", w) for w in range(5)] == ["scared", "happy", "joyful", "genius", "joyful"]


@pytest.mark.parametrize("word, expected", [
    ("worried", ["scared", "fearful", "scared", "fear", "scared"]),
    ("happy", ["happy", "happy", "joyful", "joy", "powerful"]),
    ("angry", ["mad", "angry", "mad", "anger", "mad"]),
    ("surprise", ["surprised", "surprised", "powerful", "fear", None]),
    ("neutral", [None] * 5),
])
def test_real_mer2023_classes(real_wheels, word, expected):
    assert [real_wheels.group(word, w) for w in range(5)] == expected


def test_real_wheel2_keeps_the_later_cluster_of_a_repeated_word(real_wheels):
    # 'embarrassed' is listed under 'disgusted' and later under 'sad' in wheel2.xlsx
    assert real_wheels.clusters[1]["embarrassed"] == "sad"
