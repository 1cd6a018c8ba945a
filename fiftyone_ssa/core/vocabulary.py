"""Class-name candidates of SSA-engine: normalisation, COCO name refinement, de-duplication.

Each mask's candidates are the union of its two close-set names (ADE20K, refined COCO), the
noun phrases of its caption and, optionally, a user vocabulary, de-duplicated in that order
(case-insensitively, the first spelling kept, except that a name the vocabulary holds is
spelled as the vocabulary spells it). With ``mode="restrict"`` the user vocabulary alone
is the candidate list, so every answer is one of its names.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

VOCABULARY_MODES = ("add", "restrict")

# COCO panoptic suffixes that name a merge or a catch-all, not the thing itself.
_COCO_SUFFIXES = ("-merged", "-other", "-stuff")
_SPACES = re.compile(r"\s+")
_EDGE_PUNCTUATION = " \t\n\r.,;:!?\"'`()[]{}"


def normalize_name(name: str) -> str:
    """A class name with whitespace collapsed and surrounding punctuation removed.

    Case and inner characters are kept, so a user's names stay spelled as given.

    Args:
        name: any string.

    Returns:
        The cleaned name (possibly empty).
    """
    if not isinstance(name, str):
        raise ValueError(f"Expected a class name string, but got {type(name).__name__}")
    return _SPACES.sub(" ", name).strip(_EDGE_PUNCTUATION)


def refine_coco_name(name: str) -> str:
    """A COCO panoptic class name without its ``-merged``, ``-other`` and ``-stuff`` suffixes.

    ``wall-other-merged`` -> ``wall``, ``door-stuff`` -> ``door``, ``sky-other-merged`` ->
    ``sky``; names like ``floor-wood`` are kept.
    """
    name = normalize_name(name)
    changed = True
    while changed:
        changed = False
        for suffix in _COCO_SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                changed = True
    return name


def dedupe_names(names: Iterable[str]) -> list[str]:
    """Normalised names without empties and case-insensitive repeats, first spelling kept.

    Names that differ only in Unicode composition (``"café"`` typed as one code point or as
    ``e`` plus a combining accent) are repeats: they look the same and CLIP's tokenizer reads
    them as one text.
    """
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        clean = normalize_name(name)
        key = _key(clean)
        if clean and key not in seen:
            seen.add(key)
            out.append(clean)
    return out


def _key(clean: str) -> str:
    """What makes two normalised names the same name: case and Unicode composition aside."""
    return unicodedata.normalize("NFC", clean).casefold()


def check_vocabulary(vocabulary: Sequence[str] | None, mode: str) -> list[str]:
    """Validates a user vocabulary and its mode; returns the cleaned names.

    Raises:
        ValueError: an unknown mode, a non-string name, or ``restrict`` without names.
    """
    if mode not in VOCABULARY_MODES:
        raise ValueError(
            f"Expected `vocabulary_mode` to be one of {VOCABULARY_MODES}, but got {mode!r}"
        )
    if isinstance(vocabulary, str):
        raise ValueError("Expected `vocabulary` to be a list of class names, but got a string")
    names = dedupe_names(vocabulary or [])
    if mode == "restrict" and not names:
        raise ValueError(
            "Expected a non-empty `vocabulary` with vocabulary_mode='restrict', but got none"
        )
    return names


def build_candidates(
    close_set_names: Sequence[str],
    nouns: Sequence[str],
    vocabulary: Sequence[str] = (),
    mode: str = "add",
) -> list[str]:
    """One mask's candidate class names.

    Args:
        close_set_names: the mask's close-set names (ADE20K name, refined COCO name).
        nouns: noun phrases of the mask's caption.
        vocabulary: user class names.
        mode: ``"add"`` (vocabulary added to the candidates) or ``"restrict"`` (the vocabulary
            alone).

    Returns:
        The de-duplicated candidates, in the order close-set, nouns, vocabulary. A name the
        vocabulary also holds is spelled as the vocabulary spells it (``Person`` given, ADE20K's
        ``person`` found): one class keeps one spelling across masks.
    """
    if mode == "restrict":
        return dedupe_names(vocabulary)
    if mode != "add":
        raise ValueError(f"Expected `mode` to be one of {VOCABULARY_MODES}, but got {mode!r}")
    spelling = {_key(name): name for name in dedupe_names(vocabulary)}
    names = dedupe_names([*close_set_names, *nouns, *vocabulary])
    return [spelling.get(_key(name), name) for name in names]
