"""A cheap scan for Twilio's ``media`` messages, the 50-a-second-per-call bulk of inbound traffic.

``parse_inbound`` (json.loads, then field-by-field validation) costs ~9 µs per message; a media
message in exactly the shape Twilio sends it is recognised here in ~1 µs, and returns the streamSid
and the payload *still in base64*: the caller decodes it only when something listens (the barge-in
VAD while the bot speaks, or the recogniser). Anything that is not in that exact shape (other
field order, escapes, extra fields, odd padding, non-ASCII) returns None and goes through
``parse_inbound``, so every protocol error is still reported by the full parser.

One anchored regular expression matches the message; the ~216-character payload is matched by
``.{4,N}`` under DOTALL, which the regex engine skips in one step (no per-character test), and is
then only checked for its length, padding and the characters that would change its JSON meaning
(quote, backslash). The previous expression tested every payload character against the base64
class: ~10% of a busy bridge's CPU. Whether the payload is valid base64 is left to the strict
decode (``binascii.a2b_base64(strict_mode=True)``) done when the audio is needed; a payload that
fails it goes to the full parser too (telephony/twilio/inbound.py). A frame nobody hears is not
decoded, so a malformed payload in one is not reported: nothing is done with it either.
"""

from __future__ import annotations

import re

from telephony.twilio.protocol import MAX_PAYLOAD_BYTES, base64_limit

_B64_MAX = base64_limit(MAX_PAYLOAD_BYTES)
_MEDIA_RE = re.compile(
    # Compact JSON (Twilio's) or Python's json.dumps default (one space after ':' and ',').
    r'\{"event": ?"media", ?"sequenceNumber": ?"[0-9]{1,18}", ?"streamSid": ?"([A-Za-z0-9]{1,64})", ?'
    r'"media": ?\{"track": ?"[a-z_]{1,32}", ?"chunk": ?"[0-9]{1,18}", ?"timestamp": ?"[0-9]{1,18}", ?'
    r'"payload": ?"(.{4,' + str(_B64_MAX) + r'})"\}\}',
    re.DOTALL,
)


def scan_media(raw: str | bytes | None) -> tuple[str, str] | None:
    """``(streamSid, base64 payload)`` of a well-formed Twilio media message, else None.

    The payload returned here is 4 to ``base64_limit(MAX_PAYLOAD_BYTES)`` ASCII characters, a
    multiple of 4, with no quote, backslash or more than two '=' at its end; it is *not* checked
    for the base64 alphabet: decode it with ``a2b_base64(payload, strict_mode=True)`` and send the
    message to ``parse_inbound`` if that fails."""
    if not isinstance(raw, str) or not raw.isascii():  # isascii: O(1) on str
        return None
    match = _MEDIA_RE.fullmatch(raw)
    if match is None:
        return None
    stream_sid, payload = match.groups()
    if len(payload) % 4 or '"' in payload or "\\" in payload or payload.endswith("==="):
        return None
    return stream_sid, payload
