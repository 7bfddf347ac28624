"""Cut streamed agent text into speakable segments, as early as is safe.

Agent text arrives as LLM tokens, arbitrary fragments of the reply ("Hel", "lo, D", "r. Smith. It's
6:", "30 now"). The TTS engine wants whole phrases: a sentence, or a long enough clause. This module
decides where those phrases end while the text is still arriving.

Rules, in order of preference:

* A sentence ends at ``.``, ``!``, ``?`` or ``…`` (closing quotes and brackets after them included)
  once whitespace follows. "3." may still become "3.5", so nothing is decided until the next
  character is known. A newline always ends a segment.
* A clause ends at ``,``, ``;``, ``:`` or a dash (`` - ``, ``–``, ``—``, ``--``) followed by
  whitespace, but only once the segment is ``min_clause_chars`` long (``first_min_clause_chars``
  for the first segment of a turn, so first audio comes sooner).
* Without any boundary, a segment longer than ``max_chars`` is cut at its last whitespace within
  ``max_chars`` (a single longer word is kept whole).

Cuts are only ever made at whitespace, so numbers ("3.5", "10,000"), times ("6:30"), e-mail
addresses and URLs are never split, and the emitted segments joined with single spaces give back the
words of the input exactly. Periods after abbreviations ("Dr.", "e.g.", "J. Smith"), after "etc." or
"p.m." before a lowercase word, and stray or list-marker periods do not end a sentence.

Every decision depends only on the text itself, never on how it was split into tokens: pushing a
text token by token gives the same segments as pushing it whole. A decision that needs a character
not yet received waits for it (or for :meth:`TextSegmenter.flush`, the end of the turn).
"""

from __future__ import annotations

import re
from enum import Enum

from tts_core.presets import SegmentationSettings

__all__ = ["TextSegmenter", "segment_text"]

_WHITESPACE = re.compile(r"\s")
_NON_WHITESPACE = re.compile(r"\S")
_UP_TO_LAST_WHITESPACE = re.compile(r".*\s", re.DOTALL)

_TERMINATORS = ".!?…"
_CLOSERS = "\"')]}»”’"
_OPENERS = "\"'([{«“‘"
_CLAUSE_PUNCTUATION = ",;:"
_DASH_ENDINGS = ("--", "–", "—")

_NEVER_SENTENCE_END = frozenset(
    {
        # Titles and name parts: "Dr. Smith", "Main St. station", "Martin Luther King Jr. said".
        "dr", "mr", "mrs", "ms", "mx", "prof", "sr", "jr", "st", "mt", "rev", "fr", "hon",
        "gen", "col", "capt", "lt", "sgt",
        # Latin and comparison: "e.g. apples", "i.e. now", "cats vs. dogs", "Roe v. Wade".
        "e.g", "i.e", "cf", "viz", "vs", "v",
    }
)  # fmt: skip
"""Words whose period never ends a sentence (compared lowercased, without the period)."""

_SENTENCE_END_UNLESS_CONTINUED = frozenset(
    {
        "etc", "a.m", "p.m", "u.s", "u.k", "inc", "ltd", "co", "corp", "approx", "dept", "est",
        "no", "vol", "fig", "al", "ext", "tel",
        # Dates and addresses, common in phone prompts: "on Jan. 5", "12 Main Ave. between".
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
        "ave", "blvd", "rd", "apt", "ste", "bldg", "hwy",
        # Units: "about 5 lbs. in total", "20 min. from here".
        "lb", "lbs", "oz", "ft", "min", "mins", "hr", "hrs", "sec", "secs", "mi", "km", "kg",
    }
)  # fmt: skip
"""Words whose period ends a sentence only if the next word does not start in lowercase or a digit
("at 6 p.m. tomorrow" and "room no. 5" go on; "at 6 p.m. Bye" and "No. I can't" do not)."""

_DOTTED_ACRONYM = re.compile(r"(?:[A-Za-z]{1,2}\.)+[A-Za-z]{1,2}")
"""Any "X.Y" abbreviation, "Ph.D" included (its final period stripped): treated like the words
above."""


class _Boundary(Enum):
    NONE = "none"
    CLAUSE = "clause"
    SENTENCE = "sentence"
    WAIT = "wait"  # depends on a character that has not arrived yet


class TextSegmenter:
    """Turns a stream of text tokens into speakable segments for one speaker.

    ``push`` a token as it arrives and get back the segments it completed (often none); ``flush``
    at the end of the turn for the rest; ``reset`` on barge-in to drop what is buffered. Not
    thread-safe: one segmenter per call.
    """

    def __init__(self, settings: SegmentationSettings | None = None) -> None:
        self.settings = settings if settings is not None else SegmentationSettings()
        self._buf = ""
        self._start = 0  # index in _buf where the current segment starts (or will, past whitespace)
        self._scan = 0  # whitespace before this index has been ruled out as the current segment's end
        self._first = True  # the current segment is the first of the turn

    @property
    def pending_text(self) -> str:
        """Text buffered but not yet emitted (without leading whitespace)."""
        return self._buf.lstrip()

    def push(self, token: str) -> list[str]:
        """Add a token; return the segments (zero or more) that are now complete."""
        if not token:
            return []
        self._buf += token
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of turn: return the remaining segments, then reset for the next turn."""
        segments = self._drain(final=True)
        rest = self._buf.strip()
        if rest:
            segments.append(rest)
        self.reset()
        return segments

    def reset(self) -> None:
        """Drop all buffered text (barge-in); the next push starts a new turn."""
        self._buf = ""
        self._start = 0
        self._scan = 0
        self._first = True

    # -- internals -----------------------------------------------------------------------------

    def _drain(self, final: bool) -> list[str]:
        segments: list[str] = []
        while (cut := self._find_cut(final)) is not None:
            segments.append(self._buf[self._start : cut].strip())
            self._buf = self._buf[cut:]
            self._start = 0
            self._scan = 0
            self._first = False
        return segments

    def _find_cut(self, final: bool) -> int | None:
        """Index of the whitespace that ends the current segment, or None if not known yet."""
        buf = self._buf
        n = len(buf)
        start = self._start
        while start < n and buf[start].isspace():
            start += 1
        self._start = start
        if start >= n:
            return None

        settings = self.settings
        min_clause = settings.min_clause_chars
        if self._first and settings.first_min_clause_chars is not None:
            min_clause = settings.first_min_clause_chars
        limit = start + settings.max_chars  # a cut at `limit` gives a segment of max_chars

        pos = max(self._scan, start + 1)
        while (match := _WHITESPACE.search(buf, pos)) is not None and match.start() <= limit:
            cut = match.start()
            if buf[cut] == "\n":
                return cut
            if not buf[cut - 1].isspace():
                kind = _classify(buf, start, cut, final)
                if kind is _Boundary.WAIT:
                    self._scan = cut
                    return None
                if kind is _Boundary.SENTENCE:
                    return cut
                if kind is _Boundary.CLAUSE and cut - start >= min_clause:
                    return cut
            pos = cut + 1
        # Nothing in buf[pos:] is whitespace when the search found none: the next push resumes at
        # the end instead of rescanning (a long run without spaces would otherwise cost n² time).
        self._scan = pos if match is not None else max(pos, n)

        if n - start > settings.max_chars:
            return _overflow_cut(buf, start, limit, self._scan)
        return None


def _overflow_cut(buf: str, start: int, limit: int, scanned: int) -> int | None:
    """Cut for a segment with no boundary within max_chars: the last whitespace up to ``limit``,
    else (one long word) the first whitespace after it, else None (wait for the word to end).
    ``buf[limit + 1:scanned]`` is known to hold no whitespace."""
    match = _UP_TO_LAST_WHITESPACE.match(buf, start + 1, limit + 1)
    if match is not None:
        return match.end() - 1
    match = _WHITESPACE.search(buf, max(limit + 1, scanned))
    return match.start() if match is not None else None


def _classify(buf: str, start: int, cut: int, final: bool) -> _Boundary:
    """What kind of boundary the word that ends at ``buf[cut]`` (whitespace) makes."""
    word_start = cut
    while word_start > start and not buf[word_start - 1].isspace():
        word_start -= 1
    token = buf[word_start:cut]

    if token.endswith(_DASH_ENDINGS) or token == "-":
        return _Boundary.CLAUSE

    core = token.rstrip(_CLOSERS)
    closed = len(core) < len(token)
    if not core:
        return _Boundary.NONE
    if core[-1] in _CLAUSE_PUNCTUATION:
        return _Boundary.CLAUSE
    if core[-1] not in _TERMINATORS:
        return _Boundary.NONE

    body = core.rstrip(_TERMINATORS)
    run = core[len(body) :]
    if "?" in run or "!" in run:
        # '"Really?" she asked' goes on; a bare "Really? She" ends.
        return _unless_continued(buf, cut, final, _Boundary.CLAUSE) if closed else _Boundary.SENTENCE
    if len(run) > 1 or "…" in run:
        # "Well... okay" is a pause; "Well... Okay." ends a sentence.
        return _unless_continued(buf, cut, final, _Boundary.CLAUSE)

    word = body.lstrip(_OPENERS)
    if not word:
        return _Boundary.NONE  # a stray " . " (spaced ellipsis ". . .") ends nothing
    lowered = word.lower()
    if lowered in _NEVER_SENTENCE_END:
        return _Boundary.NONE
    if len(word) == 1 and word.isupper() and word != "I":
        return _Boundary.NONE  # an initial: "J. Smith"
    if word.isdigit() and word_start == start:
        return _Boundary.NONE  # a list marker: "1. Call the office"
    if lowered in _SENTENCE_END_UNLESS_CONTINUED or _DOTTED_ACRONYM.fullmatch(word):
        return _unless_continued(buf, cut, final, _Boundary.NONE)
    if closed:
        return _unless_continued(buf, cut, final, _Boundary.CLAUSE)
    return _Boundary.SENTENCE


def _unless_continued(buf: str, cut: int, final: bool, continued: _Boundary) -> _Boundary:
    """SENTENCE, or ``continued`` if the next word starts with a lowercase letter or a digit."""
    match = _NON_WHITESPACE.search(buf, cut)
    if match is None:
        return _Boundary.SENTENCE if final else _Boundary.WAIT
    char = match.group()
    return continued if char.islower() or char.isdigit() else _Boundary.SENTENCE


def segment_text(text: str, settings: SegmentationSettings | None = None) -> list[str]:
    """Segments of a whole text, exactly as streaming it token by token would give."""
    segmenter = TextSegmenter(settings)
    return segmenter.push(text) + segmenter.flush()
