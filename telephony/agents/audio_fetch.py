"""Fetch an audio file an agent asked us to play (ConversationRelay's ``play``) and decode it.

Only WAV is accepted: linear PCM (8, 16, 24 or 32 bit) and G.711 μ-law WAV (format tag 7), decoded by
the one WAV reader, tts_core/audio/wav_file.py. The header decides, not
the URL's extension or the Content-Type. Anything else (MP3, Ogg, ...) is refused with a message that
says so: decoding compressed formats needs a native decoder we do not ship.

The body is streamed and the size cap is enforced while reading, so a huge or endless response
costs at most ``max_bytes`` of memory. Decoding runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np

from telephony.egress import EgressRefused
from tts_core.audio.telephony_format import TELEPHONY_RATE
from tts_core.audio.wav_file import MULAW, PCM, AudioFileError, read_wav, sniff
from tts_core.errors import UpstreamFailed
from tts_core.http_body import BodyEncoded, BodyTooLarge, read_limited

WAVE_FORMAT_PCM = PCM
WAVE_FORMAT_MULAW = MULAW
MIN_SAMPLE_RATE = TELEPHONY_RATE
"""Below telephone rate a clip would be upsampled many-fold: a small file, a huge one in memory."""
MAX_SAMPLE_RATE = 384_000

log = logging.getLogger(__name__)


MAX_REDIRECTS = 3
"""Redirect hops a ``play`` download follows (by hand: each hop's address is checked anew)."""
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class AudioFetchError(UpstreamFailed):
    """The audio could not be fetched or decoded; the message is fit to show the agent: it names a
    category ("play source refused: address not allowed", "download failed: cannot connect"), never
    an address, a redirect target or a low-level error from inside our network. An upstream failure:
    the media server an agent pointed us at gave nothing we can play."""


async def fetch_audio(
    client: httpx.AsyncClient, url: str, *, max_bytes: int, timeout_s: float = 10.0
) -> tuple[np.ndarray, int]:
    """GET ``url`` (http/https only) and return ``(float32 mono samples in [-1, 1], sample rate)``.

    Where the client may connect is the client's business: the bridge passes one built by
    ``telephony.egress.guarded_client``, which checks every connection, each redirect hop's too."""
    body = await download_audio(client, url, max_bytes=max_bytes, timeout_s=timeout_s)
    return await asyncio.to_thread(decode_wav, body, source=url)


async def download_audio(client: httpx.AsyncClient, url: str, *, max_bytes: int,
                         timeout_s: float = 10.0) -> bytes:
    """The body at ``url``, following at most ``MAX_REDIRECTS`` redirects, each one checked."""
    _check_scheme(url)
    try:
        async with asyncio.timeout(timeout_s):
            return await _download(client, url, max_bytes=max_bytes, timeout_s=timeout_s)
    except TimeoutError:
        raise AudioFetchError(f"download failed: timed out after {timeout_s:g} s") from None
    except EgressRefused as exc:
        log.info("play download of %s refused: %s", url, exc)
        raise AudioFetchError(f"play source refused: {EgressRefused.PUBLIC_MESSAGE}") from None
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        log.info("play download of %s: cannot connect: %r", url, exc)
        raise AudioFetchError("download failed: cannot connect") from None
    except httpx.HTTPError as exc:
        log.info("play download of %s failed: %r", url, exc)
        raise AudioFetchError(f"download failed: {_http_category(exc)}") from None


def _check_scheme(url: str) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise AudioFetchError("play source refused: not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise AudioFetchError("play source refused: only http:// and https:// URLs are supported")
    if not host:
        raise AudioFetchError("play source refused: the URL names no host")


def _http_category(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.LocalProtocolError):
        return "protocol error"
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return "invalid URL"
    return "network error"


async def _download(client: httpx.AsyncClient, url: str, *, max_bytes: int, timeout_s: float) -> bytes:
    headers = {"Accept-Encoding": "identity"}  # a compressed body is refused (see read_limited)
    for _hop in range(MAX_REDIRECTS + 1):
        async with client.stream("GET", url, timeout=timeout_s, follow_redirects=False,
                                 headers=headers) as response:
            if response.status_code in REDIRECT_STATUSES:
                location = response.headers.get("location", "")
                if not location:
                    raise AudioFetchError(f"download failed: HTTP {response.status_code} without a Location")
                url = urljoin(str(response.url), location)
                _check_scheme(url)  # the hop's address is checked when the client connects to it
                continue
            if response.status_code != 200:
                raise AudioFetchError(f"download failed: HTTP {response.status_code}")
            try:
                return await read_limited(response, max_bytes)
            except BodyTooLarge as exc:
                size = f"{exc.declared} bytes" if exc.declared is not None else "over the limit"
                raise AudioFetchError(
                    f"download failed: audio too large: {size} (the limit is {max_bytes})") from None
            except BodyEncoded as exc:
                raise AudioFetchError(f"download failed: {exc}") from None
    raise AudioFetchError(f"download failed: more than {MAX_REDIRECTS} redirects")


def decoded_bytes(data: bytes) -> int:
    """What decoding ``data`` will hold (float32 mono samples), read from the WAV header alone,
    without copying: a play's share of the call's audio budget is reserved before it decodes.
    Not a WAV, or a header ``decode_wav`` will refuse: 0 (decoding raises the real error)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    view = memoryview(data)
    pos, fmt, data_size = 12, None, 0
    while pos + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", view, pos)
        available = min(size, len(data) - pos - 8)
        if chunk_id == b"fmt " and fmt is None and available >= 16:
            fmt = struct.unpack_from("<HHIIHH", view, pos + 8)
        elif chunk_id == b"data" and not data_size:
            data_size = available
        pos += 8 + size + (size & 1)
    if fmt is None:
        return 0
    _tag, channels, _rate, _byte_rate, _align, bits = fmt
    if channels < 1 or bits < 8:
        return 0
    return data_size // (channels * (bits // 8)) * 4


def decode_wav(data: bytes, *, source: str = "audio") -> tuple[np.ndarray, int]:
    """Decode a WAV file (PCM or μ-law) to float32 mono through the one WAV reader
    (tts_core/audio/wav_file.py); raise ``AudioFetchError`` otherwise."""
    if sniff(data) != "wav":
        raise AudioFetchError(
            f"unsupported audio format from {source} ({_sniff(data)}): only WAV is supported "
            "(linear PCM or μ-law)"
        )
    try:
        samples, rate = read_wav(data, min_rate=MIN_SAMPLE_RATE, max_rate=MAX_SAMPLE_RATE,
                                 encodings=(WAVE_FORMAT_PCM, WAVE_FORMAT_MULAW))
    except AudioFileError as exc:
        raise AudioFetchError(f"invalid WAV from {source}: {exc}") from None
    if samples.size == 0:
        raise AudioFetchError(f"WAV from {source} contains no audio")
    return samples, rate


def _sniff(data: bytes) -> str:
    """Name a non-WAV payload for the error message."""
    head = data[:16]
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "looks like MP3"
    if head.startswith(b"OggS"):
        return "looks like Ogg"
    if head.startswith(b"fLaC"):
        return "looks like FLAC"
    if head[4:8] == b"ftyp":
        return "looks like MP4/AAC"
    if head.lstrip().startswith((b"<", b"{")):
        return "looks like text, not audio"
    if not data:
        return "empty response"
    return "not a RIFF/WAVE file"
