"""Noun phrases of captions with spaCy: the caption's share of each mask's candidates.

With a parser (``en_core_web_sm``), the phrases are spaCy's noun chunks; a pipeline with only a
tagger falls back to runs of adjectives and nouns ending in a noun; a pipeline with neither to
runs of words that are not stop words. Leading determiners and pronouns are dropped ("a red
car" -> "red car"), and phrases that are only pronouns ("it") are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from fiftyone_ssa.fields import DEFAULT_SPACY_MODEL

_NOUNS = {"NOUN", "PROPN"}
_MODIFIERS = {"ADJ", "NOUN", "PROPN"}
_LEADING_DROP = {"DET", "PRON", "PUNCT", "SPACE", "CCONJ", "ADP", "PART"}


def load_spacy(model: Any = DEFAULT_SPACY_MODEL):
    """A spaCy pipeline from an installed package name or a directory saved with ``to_disk``.

    Args:
        model: a package name (``en_core_web_sm``), a path, or an already loaded ``Language``.

    Raises:
        ImportError: spaCy or the named pipeline is not installed (one line with the command
            that installs it).
    """
    if not isinstance(model, (str, os.PathLike)):
        if hasattr(model, "pipe") and hasattr(model, "pipe_names"):
            return model
        raise ValueError(
            f"Expected a spaCy model name, path or Language, but got {type(model).__name__}"
        )
    try:
        import spacy
    except ImportError:
        raise ImportError(
            "SSA-engine needs spaCy for caption nouns: pip install spacy && python -m spacy "
            f"download {DEFAULT_SPACY_MODEL}"
        ) from None
    name = os.fspath(model)
    try:
        # Only the components noun phrases need; the rest would only cost time.
        return spacy.load(name, exclude=["ner", "lemmatizer", "textcat"])
    except (OSError, ImportError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if os.path.sep in name or os.path.exists(name):
            hint = f"{name} is not a spaCy pipeline saved with `nlp.to_disk`"
        else:
            hint = f"install it with `python -m spacy download {name}`"
        raise ImportError(
            f"cannot load the spaCy pipeline {name!r} ({reason}); {hint}, or pass "
            "--spacy-model / spacy_model= with an installed pipeline name or a path"
        ) from None


def _trim(tokens) -> list:
    """Tokens without leading determiners, pronouns, punctuation and stop words."""
    tokens = list(tokens)
    while tokens and (
        tokens[0].pos_ in _LEADING_DROP or (tokens[0].is_stop and tokens[0].pos_ not in _NOUNS)
    ):
        tokens = tokens[1:]
    while tokens and tokens[-1].pos_ in ("PUNCT", "SPACE"):
        tokens = tokens[:-1]
    return tokens


def _phrase(tokens) -> str:
    return " ".join(t.text for t in tokens).strip()


def _from_chunks(doc) -> list[str]:
    phrases = []
    for chunk in doc.noun_chunks:
        tokens = _trim(chunk)
        if tokens and any(t.pos_ in _NOUNS for t in tokens):
            phrases.append(_phrase(tokens))
    return phrases


def _from_tags(doc) -> list[str]:
    """Maximal runs of ADJ/NOUN/PROPN tokens, cut after their last noun."""
    phrases, run = [], []
    for token in [*doc, None]:
        if token is not None and token.pos_ in _MODIFIERS:
            run.append(token)
            continue
        while run and run[-1].pos_ not in _NOUNS:
            run.pop()
        if run:
            phrases.append(_phrase(run))
        run = []
    return phrases


def _from_words(doc) -> list[str]:
    """Maximal runs of alphabetic words that are not stop words."""
    phrases, run = [], []
    for token in [*doc, None]:
        if token is not None and token.is_alpha and not token.is_stop:
            run.append(token)
            continue
        if run:
            phrases.append(_phrase(run))
        run = []
    return phrases


def doc_noun_phrases(doc) -> list[str]:
    """Noun phrases of one parsed spaCy ``Doc``, by the best annotation it has."""
    if doc.has_annotation("DEP"):
        return _from_chunks(doc)
    if doc.has_annotation("POS"):
        return _from_tags(doc)
    return _from_words(doc)


class NounExtractor:
    """Noun phrases of many texts at once (``nlp.pipe``).

    Args:
        model: spaCy pipeline name, path or loaded ``Language`` (``en_core_web_sm`` by default).
        batch_size: texts per ``nlp.pipe`` batch.
    """

    def __init__(self, model: Any = DEFAULT_SPACY_MODEL, batch_size: int = 256):
        if batch_size < 1:
            raise ValueError(f"Expected `batch_size` to be >= 1, but got {batch_size}")
        self.nlp = load_spacy(model)
        self.batch_size = batch_size
        self.name = getattr(self.nlp, "meta", {}).get("name", "") or str(model)

    @property
    def strategy(self) -> str:
        """``"noun_chunks"``, ``"pos"`` or ``"words"``: what the pipeline can offer."""
        doc = self.nlp("a red car")
        if doc.has_annotation("DEP"):
            return "noun_chunks"
        return "pos" if doc.has_annotation("POS") else "words"

    def extract(self, texts: Sequence[str]) -> list[list[str]]:
        """The noun phrases of each text, in order of appearance.

        Args:
            texts: T strings.

        Returns:
            T lists of phrases (repeats kept; candidates are de-duplicated later).
        """
        texts = [str(t) for t in texts]
        return [doc_noun_phrases(doc) for doc in self.nlp.pipe(texts, batch_size=self.batch_size)]
