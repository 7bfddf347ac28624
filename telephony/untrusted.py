"""Small guards for text that comes from outside: JSON bodies and messages, close reasons, XML.

Each one turns a way that hostile or odd input used to cause a 500 (or end a call) into a clear
refusal of that one request or message:

* ``json.loads`` raises a plain ``ValueError`` (not ``JSONDecodeError``) for an integer literal over
  Python's 4,300-digit limit; every parser of untrusted JSON catches ``JSON_ERRORS``.
* A JSON ``"\\ud800"`` escape decodes to a lone surrogate, which no UTF-8 encoder accepts: the
  response (or log line, or engine request) that re-encodes it fails later, far from the input.
  ``has_lone_surrogate`` lets a parser refuse such a message up front.
* A WebSocket close reason may be at most 123 *bytes* of UTF-8 (RFC 6455 5.5: control frames carry
  at most 125 bytes, 2 of them the code); cutting by characters let a non-ASCII reason raise
  ``control frame too long`` and the peer saw 1006. ``close_reason`` cuts by bytes.
* XML 1.0 cannot carry most C0 control characters, U+FFFE/U+FFFF or surrogates, even escaped.
"""

from __future__ import annotations

import re
from typing import Any

JSON_ERRORS: tuple[type[Exception], ...] = (ValueError, RecursionError)
"""What ``json.loads`` raises for untrusted input: JSONDecodeError and UnicodeDecodeError are
ValueErrors, and so is an integer over the int-to-str digit limit; RecursionError for deep nesting."""

MAX_CLOSE_REASON_BYTES = 123


def has_lone_surrogate(value: Any) -> bool:
    """True if any string (key or value) in a parsed JSON value holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def close_reason(text: str, limit: int = MAX_CLOSE_REASON_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes at a character boundary (lone surrogates,
    which cannot be sent at all, become '?')."""
    data = text.encode("utf-8", "replace") if not text.isascii() else text.encode("ascii")
    if len(data) <= limit:
        return data.decode("utf-8")
    return data[:limit].decode("utf-8", "ignore")  # "ignore" drops only a cut final character


_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""Characters XML 1.0 does not allow anywhere (Char production), escaped or not."""


def xml_unsafe(text: str) -> bool:
    return _XML_UNSAFE.search(text) is not None


def strip_xml_unsafe(text: str) -> str:
    return _XML_UNSAFE.sub("", text)
