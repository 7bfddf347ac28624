"""Word error rate, with the text normalisation recognisers need to be compared fairly.

Whisper writes "Go forward 10 meters." where a reference transcript says "go forward ten meters";
both normalise to the same words (lower case, no punctuation, numbers spelled out, hyphenated
words split, a few written abbreviations expanded), so WER counts recognition errors, not style.
"""

from __future__ import annotations

import re

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


def _number_words(digits: str) -> list[str]:
    """Numbers under 100 as words; longer digit strings digit by digit (phone numbers, codes)."""
    value = int(digits)
    if len(digits) <= 2 and value < 100:
        if value < 20:
            return [_ONES[value]]
        tens, ones = divmod(value, 10)
        return [_TENS[tens]] + ([_ONES[ones]] if ones else [])
    return [_ONES[int(d)] for d in digits]


def normalise(text: str) -> list[str]:
    words: list[str] = []
    for token in re.findall(r"[a-z]+(?:'[a-z]+)?|\d+", text.lower().replace("-", " ")):
        if token.isdigit():
            words.extend(_number_words(token))
        else:
            words.append(_ABBREVIATIONS.get(token, token))
    return words


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(errors, reference words) after normalisation; WER = sum(errors) / sum(words)."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    return edit_distance(ref, hyp), len(ref)
