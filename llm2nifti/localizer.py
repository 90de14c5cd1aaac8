"""Stimuli of the language localizer: sentences and their matched controls, in blocks.

The fMRI language localizer (Fedorenko et al. 2010, J. Neurophysiol.)
contrasts reading sentences with reading nonword strings; AlKhamissi et al.
(2024, arXiv 2411.02280) apply it to the units of language models. Here the
stimuli are built from a text, deterministically from a seed:

Sentences (:func:`prose_sentences`)
    Sentences of the text (split after ``.``, ``!`` or ``?``) that read as
    prose: they start with a capital letter, hold ``min_words`` to
    ``max_words`` words, and no digits or code characters (``()[]{}<>=_*#`|\\/``
    and so on). Duplicates are dropped; the order of the text is kept.
Nonword control (``control="nonwords"``, :func:`nonword_string`)
    Each sentence made into a nonword string of the same length: every letter
    is replaced by a random letter of the same kind (vowel by vowel, consonant
    by consonant, keeping its case); spaces, punctuation and word lengths are
    kept. Same characters per block, same word-length profile, no words.
Shuffled control (``control="shuffled"``, :func:`shuffled_words`)
    The words of the block's sentences in random order (a "word list"): the
    same words, no sentence structure.

Blocks (:func:`build_stimuli`) hold ``block_sentences`` consecutive sentences;
each sentence block is followed by the control made from it (S1 N1 S2 N2 ...),
blocks separated by a blank line, which belongs to no condition (``n/a``, the
GLM's baseline). The character spans of the blocks are the annotations that
label the export's tokens ``sentence`` or ``nonword``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .checks import check_choice, check_int
from .errors import ParameterError

CONTROLS = ("nonwords", "shuffled")
CONDITIONS = ("sentence", "nonword")
CONTRAST = "sentence - nonword"
VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnpqrstvwxyz"
_CODE = re.compile(r"[0-9()\[\]{}<>=_*#`|\\/@$%^~+\"]")
_SENTENCE = re.compile(r"[A-Z][^.!?]*[.!?]")
BLOCK_SEPARATOR = "\n\n"


def prose_sentences(text: str, min_words: int = 6, max_words: int = 30) -> list[str]:
    """Prose sentences of ``text`` (see the module docstring), whitespace normalised, in order, unique."""
    seen, out = set(), []
    for match in _SENTENCE.finditer(text):
        sentence = " ".join(match.group().split())
        words = sentence.split()
        if not min_words <= len(words) <= max_words or _CODE.search(sentence) or sentence in seen:
            continue
        if sum(w.strip(".,;:!?'-").isalpha() for w in words) < len(words):
            continue
        seen.add(sentence)
        out.append(sentence)
    return out


def nonword_string(sentence: str, rng: random.Random) -> str:
    """The sentence with every letter replaced by a random letter of the same kind and case."""
    chars = []
    for ch in sentence:
        lower = ch.lower()
        if lower in VOWELS:
            new = rng.choice(VOWELS)
        elif lower in CONSONANTS:
            new = rng.choice(CONSONANTS)
        else:
            chars.append(ch)
            continue
        chars.append(new.upper() if ch.isupper() else new)
    return "".join(chars)


def shuffled_words(sentences: list[str], rng: random.Random) -> str:
    """The words of ``sentences`` in random order."""
    words = " ".join(sentences).split()
    rng.shuffle(words)
    return " ".join(words)


@dataclass(frozen=True)
class Stimuli:
    """The localizer text and the character span of each block.

    Attributes
    ----------
    text : str
    spans : list of (int, int, str)
        ``(start, end, condition)`` of every block, end exclusive.
    control : str
    n_sentences : int
    """

    text: str
    spans: list
    control: str
    n_sentences: int

    def annotations_tsv(self) -> str:
        """``start end label``: the annotation table :func:`llm2nifti.features.read_annotations` reads."""
        rows = ["start\tend\tlabel"] + [f"{a}\t{b}\t{label}" for a, b, label in self.spans]
        return "\n".join(rows) + "\n"


def build_stimuli(sentences: list[str], *, block_sentences: int = 4, control: str = "nonwords",
                  seed: int = 0, max_blocks: int | None = None) -> Stimuli:
    """Alternating sentence and control blocks made from ``sentences`` (see the module docstring)."""
    check_choice("control", control, CONTROLS)
    check_int("block_sentences", block_sentences, min_value=1)
    check_int("max_blocks", max_blocks, min_value=1, none_ok=True)
    n_blocks = len(sentences) // block_sentences
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    if n_blocks < 2:
        raise ParameterError(f"the text has {len(sentences)} prose sentences, too few for two blocks of "
                             f"`block_sentences` {block_sentences}; give a longer `text`")
    rng = random.Random(seed)
    parts, spans, position = [], [], 0
    for b in range(n_blocks):
        chosen = sentences[b * block_sentences:(b + 1) * block_sentences]
        sentence_block = " ".join(chosen)
        control_block = (" ".join(nonword_string(s, rng) for s in chosen) if control == "nonwords"
                         else shuffled_words(chosen, rng))
        for block, label in ((sentence_block, CONDITIONS[0]), (control_block, CONDITIONS[1])):
            if parts:
                parts.append(BLOCK_SEPARATOR)
                position += len(BLOCK_SEPARATOR)
            parts.append(block)
            spans.append((position, position + len(block), label))
            position += len(block)
    return Stimuli("".join(parts) + "\n", spans, control, n_blocks * block_sentences)
