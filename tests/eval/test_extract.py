"""Answer extraction: the lexicon extractor on tricky strings, the LLM extractor seam, sentiment and class mapping."""
from __future__ import annotations

import pytest

from affectverse_ds.eval.extract import (
    LexiconExtractor, LLMExtractor, SentimentMapper, closed_class, list_items, parse_llm_reply, tokenize,
)

VOCAB = ["happy", "happiness", "sad", "angry", "anxious", "worried", "calm", "at a loss", "at ease",
         "ill at ease", "don’t care", "emotional", "bit", "care", "relieved"]


@pytest.fixture(scope="module")
def lexicon() -> LexiconExtractor:
    return LexiconExtractor(VOCAB)


@pytest.mark.parametrize("text, expected", [
    # the trained answer template, and AffectGPT's bracket lists
    ("The character's emotional state is worried, anxious and sad.", ["worried", "anxious", "sad"]),
    ("The character’s emotional state is Happy.", ["happy"]),
    ("[concerned, stressed, anxious]", ["concerned", "stressed", "anxious"]),
    ("[]", []),
    ("", []),
    # negation inside a list drops that item only
    ("The character's emotional state is not happy, relieved.", ["relieved"]),
    ("[not happy, sad]", ["sad"]),
    # free text: multi-word forms, longest first
    ("He seems completely at a loss.", ["at a loss"]),
    ("She is ill at ease today", ["ill at ease"]),
    ("She was at ease", ["at ease"]),
    # casing and punctuation
    ("ANGRY!!! Sad... (happy)", ["angry", "sad", "happy"]),
    ("happy,sad;angry", ["happy", "sad", "angry"]),
    # negation scope: close negations drop, a clause break or 'but' ends them
    ("She is not happy.", []),
    ("She isn't happy, she is sad.", ["sad"]),
    ("She is not very happy", []),
    ("not angry but happy", ["happy"]),
    ("She was never anxious", []),
    ("No, she is happy", ["happy"]),
    ("She is not in any way at all happy", ["happy"]),  # beyond the 3-token window
    # a form that starts with a negation is an emotion, curly or straight apostrophe
    ("I don't care anymore", ["don’t care"]),
    ("I don’t care anymore", ["don’t care"]),
    ("He doesn't care", []),
    # frame words that happen to be forms are not emotions; duplicates collapse
    ("Her emotional state: a bit sad, sad, SAD", ["sad"]),
    ("happy happiness happy", ["happy", "happiness"]),
])
def test_lexicon_extractor(lexicon, text, expected):
    assert lexicon.extract(text) == expected


def test_unmapped_words_in_lists_are_kept_for_the_scorer_to_drop(lexicon):
    # G_w drops words the tables do not know; extraction must not decide that earlier
    assert lexicon.extract("[humorous, tension]") == ["humorous", "tension"]


def test_tokenize_keeps_inner_apostrophes_and_hyphens():
    assert tokenize("Don’t be double-crossed, OK?") == ["don't", "be", "double-crossed", ",", "ok", "?"]


def test_list_items_is_none_for_prose():
    assert list_items("she looks happy") is None
    assert list_items("[a, 'b']") == ["a", "b"]


def test_real_vocabulary_multiword_and_negation(real_wheels):
    extractor = LexiconExtractor.from_wheels(real_wheels)
    text = "She is not happy at all; she seems ANGRY!!! and at a loss for words."
    assert extractor.extract(text) == ["angry", "at a loss for words"]


# ----------------------------------------------------------------------------- LLM extractor seam

def test_llm_extractor_uses_the_callable_and_parses_its_list():
    prompts = []

    def generate(prompt: str) -> str:
        prompts.append(prompt)
        return "Sure! [Worried, not happy, anxious]"

    words = LLMExtractor(generate).extract("he frowns")
    assert words == ["worried", "anxious"]
    assert len(prompts) == 1 and "he frowns" in prompts[0]


def test_llm_extractor_falls_back_when_the_reply_has_no_list(lexicon):
    assert LLMExtractor(lambda _p: "I cannot tell.", fallback=lexicon).extract("she is sad") == ["sad"]
    assert LLMExtractor(lambda _p: "I cannot tell.").extract("she is sad") == []


def test_llm_extractor_rejects_a_prompt_without_text_field():
    with pytest.raises(ValueError, match="text"):
        LLMExtractor(lambda p: p, prompt="no field")


def test_parse_llm_reply():
    assert parse_llm_reply("x [a, b] y [c]") == ["a", "b"]
    assert parse_llm_reply("none") is None


# ----------------------------------------------------------------------------- sentiment and classes

@pytest.mark.parametrize("words, expected", [
    (["happy"], "positive"),
    (["sad", "angry"], "negative"),
    (["worried", "anxious", "happy"], "negative"),
    (["fear"], "negative"),  # not pulled positive by the fear -> fearless quirk of G_w
    ([], "neutral"),
    (["humorous_not_a_word"], "neutral"),
    (["Neutral"], "neutral"),
    (["sad", "positive"], "positive"),  # an explicit polarity word decides
])
def test_sentiment_mapper(real_wheels, words, expected):
    assert SentimentMapper(real_wheels)(words) == expected


def test_sentiment_from_text(real_wheels, lexicon):
    mapper = SentimentMapper(real_wheels)
    assert mapper.from_text("The sentiment is negative.", lexicon) == "negative"
    assert mapper.from_text("Not positive, rather negative", lexicon) == "negative"
    assert mapper.from_text("She is really happy", lexicon) == "positive"
    assert mapper.from_text("", lexicon) == "neutral"


def test_sentiment_mapper_on_tiny_tables(tiny_wheels):
    mapper = SentimentMapper(tiny_wheels)
    assert mapper.word_valence("happiness") == 1
    assert mapper.word_valence("sadness") == -1
    assert mapper.word_valence("unknown") == 0


MER = ("neutral", "angry", "happy", "sad", "worried", "surprise")
MELD = ("anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise")


@pytest.mark.parametrize("words, classes, expected", [
    (["happy"], MER, "happy"),
    (["neutral"], MER, "neutral"),
    (["anger"], MER, "angry"),  # shares a format.csv base word
    (["happy"], MELD, "joy"),  # agrees on most wheels
    (["unknown", "sadness"], MER, "sad"),  # first word that names a class
    (["unknown"], MER, None),
    ([], MELD, None),
])
def test_closed_class(real_wheels, words, classes, expected):
    assert closed_class(words, classes, real_wheels) == expected
