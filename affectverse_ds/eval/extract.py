"""From a free-text answer to an emotion word list, and from a word list to a sentiment.

Two extractors share the :class:`Extractor` interface:

* :class:`LexiconExtractor` (deterministic, the default): parses the answer formats the model
  is trained on ("The character's emotional state is X, Y.", ``[x, y]``) directly, and scans any
  other text for the surface forms of ``format.csv`` (longest multi-word form first), dropping
  negated ones ("not happy").
* :class:`LLMExtractor`: asks an instruction model the user runs locally (the published
  protocol used one); it takes a ``generate(prompt) -> reply`` callable and downloads nothing.

:class:`SentimentMapper` turns a word list into ``positive`` / ``negative`` / ``neutral``, and
:func:`closed_class` reads a closed-set class from a word list for the conventional metrics.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Protocol, Sequence

from affectverse_ds.benchmarks.ovmerd import parse_word_list
from affectverse_ds.eval.wheel import EmotionWheels

POLARITY_WORDS = ("positive", "negative", "neutral")
# Words that negate an emotion word following them closely in the same clause.
NEGATIONS = frozenset({
    "not", "no", "never", "without", "hardly", "barely", "scarcely", "neither", "nor", "nothing", "none",
    "lack", "lacks", "lacking", "cannot",
})
# Tokens that close a negation's scope ("not angry but happy": happy stays).
SCOPE_BREAKERS = frozenset({"but", "though", "although", "yet", "however", "instead", "rather"})
NEGATION_WINDOW = 3  # tokens looked back from an emotion word for a negation
# Phrases that are not emotions although a word of theirs is a format.csv form ("emotional", "bit").
FRAME_PHRASES = (("emotional", "state"), ("emotional", "states"), ("emotional", "tone"), ("a", "bit"))
MIN_SHARED_WHEELS = 3  # closed_class: a word names a class when their clusters agree on most wheels
# Level-1 clusters of the five wheels, by valence; 'surprised' is left out on purpose (either way).
POSITIVE_CLUSTERS = frozenset({"happy", "joyful", "joy", "peaceful", "powerful", "genius"})
NEGATIVE_CLUSTERS = frozenset({
    "mad", "angry", "anger", "sad", "scared", "fearful", "fear", "disgusted", "disgust", "bad",
})

_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*|[.,;:!?()\[\]\n]")
_TEMPLATE = re.compile(r"emotional state (?:is|was|seems to be|appears to be|:)\s*(.+?)(?:\.\s|\.$|$)", re.S)
_BRACKETS = re.compile(r"^\s*\[[^\[\]]*\]\s*$")
_LIST_SPLIT = re.compile(r",|;|\band\b|\bor\b|/")


class Extractor(Protocol):
    """Anything that turns a free-text answer into an ordered emotion word list."""

    def extract(self, text: str) -> list[str]:
        """Return the emotion words of ``text`` (lower-case, without duplicates, in order of mention)."""
        ...


def normalize_text(text: str) -> str:
    """Lower-case, and curly quotes made straight so "don’t" and "don't" read the same."""
    return text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')


def tokenize(text: str) -> list[str]:
    """Word tokens (inner apostrophes and hyphens kept) and clause punctuation, in order."""
    return _TOKEN.findall(normalize_text(text))


def is_negation(token: str) -> bool:
    """True for a negation token ("not", "never", any "...n't")."""
    return token in NEGATIONS or token.endswith("n't")


def _dedupe(words: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(words))


class LexiconExtractor:
    """Deterministic extractor over a surface-form vocabulary (``format.csv``).

    Args:
        surface_forms: the vocabulary; multi-word forms ("at ease", "don’t care") are matched
            as a whole, longest first. Output words are spelled as in the vocabulary.
    """

    def __init__(self, surface_forms: Iterable[str]):
        self._forms: dict[tuple[str, ...], str] = {}
        for form in surface_forms:
            key = tuple(tokenize(form))
            if key:
                self._forms.setdefault(key, form)
        for phrase in FRAME_PHRASES:
            self._forms[phrase] = ""  # matched so that its words are not read as emotions
        self._longest = max((len(k) for k in self._forms), default=1)

    @classmethod
    def from_wheels(cls, wheels: EmotionWheels) -> "LexiconExtractor":
        """The extractor over every surface form of the G_w tables."""
        return cls(wheels.surface_forms())

    def extract(self, text: str) -> list[str]:
        """Emotion words of an answer.

        Args:
            text: the model's answer.

        Returns:
            For a bracket list or "... emotional state is X, Y." the listed items (negated items
            dropped); otherwise the non-negated surface forms found in the text. No duplicates.
        """
        items = list_items(text)
        if items is not None:
            # a form that starts with a negation ("don't care") is an emotion, not a negated one
            return _dedupe(i for i in items if tuple(tokenize(i)) in self._forms or not _negated_item(i))
        return _dedupe(self.scan(text))

    def scan(self, text: str) -> list[str]:
        """Every non-negated surface form in ``text``, longest match first, in order (duplicates kept)."""
        tokens, found, i = tokenize(text), [], 0
        while i < len(tokens):
            length, form = self._match_at(tokens, i)
            if length == 0:
                i += 1
                continue
            if form and not _negated_at(tokens, i):
                found.append(form)
            i += length
        return found

    def _match_at(self, tokens: Sequence[str], i: int) -> tuple[int, str]:
        for n in range(min(self._longest, len(tokens) - i), 0, -1):
            form = self._forms.get(tuple(tokens[i:i + n]))
            if form is not None:
                return n, form
        return 0, ""


def list_items(text: str) -> list[str] | None:
    """The items of a list-shaped answer, or None when the text is not one.

    Recognizes ``[a, b]`` (AffectGPT's extracted lists) and our trained answer
    "The character's emotional state is a, b and c." (items split on , ; / and, or).
    """
    if _BRACKETS.match(text):
        return list(parse_word_list(text))
    match = _TEMPLATE.search(normalize_text(text))
    if match is None:
        return None
    parts = (p.strip(" \t\n.!?\"'") for p in _LIST_SPLIT.split(match.group(1)))
    return [p for p in parts if p]


def _negated_item(item: str) -> bool:
    tokens = tokenize(item)
    return bool(tokens) and is_negation(tokens[0])


def _negated_at(tokens: Sequence[str], i: int) -> bool:
    """True when a negation precedes position ``i`` within the window, in the same clause."""
    for back in range(1, NEGATION_WINDOW + 1):
        if i - back < 0:
            return False
        token = tokens[i - back]
        if not token[0].isalnum() or token in SCOPE_BREAKERS:
            return False
        if is_negation(token):
            return True
    return False


# ----------------------------------------------------------------------------- LLM-backed extractor

DEFAULT_LLM_PROMPT = (
    "Please identify the emotional states of the character described in the following text. "
    "Output only a list of emotion words in the format [word1, word2], or [] if there are none.\n"
    "Text: {text}\nOutput:"
)


class LLMExtractor:
    """Extractor that asks a local instruction model, for free-form answers.

    Args:
        generate: ``prompt -> reply``; the user's own local model (nothing is downloaded here).
        prompt: template with a ``{text}`` field.
        fallback: extractor used when the reply holds no list (e.g. a :class:`LexiconExtractor`).
    """

    def __init__(self, generate: Callable[[str], str], prompt: str = DEFAULT_LLM_PROMPT,
                 fallback: Extractor | None = None):
        if "{text}" not in prompt:
            raise ValueError("the prompt template needs a {text} field")
        self.generate, self.prompt, self.fallback = generate, prompt, fallback

    def extract(self, text: str) -> list[str]:
        """Emotion words the model lists for ``text`` (negated items dropped), else the fallback's."""
        words = parse_llm_reply(self.generate(self.prompt.format(text=text)))
        if words is None:
            return self.fallback.extract(text) if self.fallback is not None else []
        return _dedupe(w for w in words if not _negated_item(w))


def parse_llm_reply(reply: str) -> list[str] | None:
    """Words of the first ``[...]`` list in a reply (None when the reply has no list)."""
    match = re.search(r"\[[^\[\]]*\]", reply)
    return list(parse_word_list(match.group(0))) if match else None


# ----------------------------------------------------------------------------- sentiment and classes

class SentimentMapper:
    """Word list -> ``positive`` / ``negative`` / ``neutral``.

    A polarity word in the list decides directly (the first one). Otherwise each word votes
    with the valence of the level-1 clusters of all its wheel candidates over all wheels
    (the whole candidate set rather than G_w's first hit, so one quirk such as ``fear`` in a
    joyful cluster cannot flip a word); the sign of the summed word votes gives the answer.

    Args:
        wheels: the G_w tables.
    """

    def __init__(self, wheels: EmotionWheels):
        self.wheels = wheels

    def __call__(self, words: Iterable[str]) -> str:
        words = [w.strip().lower() for w in words]
        for word in words:
            if word in POLARITY_WORDS:
                return word
        total = sum(self.word_valence(w) for w in words)
        return "positive" if total > 0 else "negative" if total < 0 else "neutral"

    def word_valence(self, word: str) -> int:
        """+1, -1 or 0: the majority valence of the word's clusters over every wheel."""
        votes = 0
        for candidate in self.wheels.candidates(word):
            for table in self.wheels.clusters:
                cluster = table.get(candidate)
                votes += (cluster in POSITIVE_CLUSTERS) - (cluster in NEGATIVE_CLUSTERS)
        return (votes > 0) - (votes < 0)

    def from_text(self, text: str, extractor: Extractor) -> str:
        """Sentiment of a free-text answer: a non-negated polarity word if the text has one, else its emotions."""
        tokens = tokenize(text)
        for i, token in enumerate(tokens):
            if token in POLARITY_WORDS and not _negated_at(tokens, i):
                return token
        return self(extractor.extract(text))


def closed_class(words: Sequence[str], classes: Sequence[str], wheels: EmotionWheels) -> str | None:
    """The closed-set class a word list names, for the conventional (neutral-included) metrics.

    The first word that names a class decides. A word names a class when it is the class,
    else when it shares a ``format.csv`` base word with it ("anger" -> "angry"), else when
    their G_w clusters agree on at least ``MIN_SHARED_WHEELS`` wheels ("happy" -> "joy");
    among classes on the same footing the one agreeing on more wheels, then the earlier, wins.

    Args:
        words: extracted words, in order of mention.
        classes: the benchmark's class words.
        wheels: the G_w tables.

    Returns:
        A class word, or None when no word names one.
    """
    for word in (w.strip().lower() for w in words):
        if word in classes:
            return word
        bases = wheels.surface_to_base.get(word, frozenset())
        for cls in classes:
            if bases & wheels.surface_to_base.get(cls, frozenset({cls})):
                return cls
        agreement = [(_shared_wheels(word, cls, wheels), -i, cls) for i, cls in enumerate(classes)]
        shared, _, cls = max(agreement, default=(0, 0, None))
        if shared >= MIN_SHARED_WHEELS:
            return cls
    return None


def _shared_wheels(word: str, cls: str, wheels: EmotionWheels) -> int:
    """On how many wheels ``word`` and ``cls`` fall in the same (non-dropped) cluster."""
    return sum(1 for w in range(wheels.n_wheels) if wheels.group(word, w) is not None
               and wheels.group(word, w) == wheels.group(cls, w))
