"""Uploaded WAV files (any common rate, mono or multichannel) -> mono float32 at the recogniser's rate.

Transcription clients send whatever their recorder made: 8-48 kHz, 16/24/32-bit PCM, float32,
G.711 (phone recordings), ``WAVE_FORMAT_EXTENSIBLE`` headers, and streamed WAVs whose sizes say
0xFFFFFFFF. The ``wave`` module refuses half of these, hence this small RIFF reader. Other
containers (mp3, ogg, flac, webm, m4a) are recognised by their magic bytes so the refusal can name
them instead of saying "not a WAV".
"""

from __future__ import annotations

import audioop
import struct

import numpy as np
import soxr

from tts_core.audio.pcm import pcm_to_float32
from tts_core.errors import InvalidInput


class AudioFileError(InvalidInput, ValueError):
    """The upload is not audio this server can decode; the message says what it is instead."""

    kind = "unsupported_file_format"


_PCM, _FLOAT, _ALAW, _MULAW, _EXTENSIBLE = 1, 3, 6, 7, 0xFFFE
MIN_RATE, MAX_RATE = 4000, 192000
MAX_CHANNELS = 16

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"ID3", 0, "mp3"), (b"\xff\xfb", 0, "mp3"), (b"\xff\xf3", 0, "mp3"), (b"\xff\xf2", 0, "mp3"),
    (b"OggS", 0, "ogg"), (b"fLaC", 0, "flac"), (b"\x1a\x45\xdf\xa3", 0, "webm"), (b"ftyp", 4, "mp4/m4a"),
)


def sniff(data: bytes) -> str | None:
    """The container an upload looks like (``wav``, ``mp3``, ...), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    for magic, offset, name in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return name
    return None


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """(mono float32 in [-1, 1], sample rate). Raises AudioFileError."""
    kind = sniff(data)
    if kind != "wav":
        what = f"looks like {kind}" if kind else "is not a WAV file (no RIFF/WAVE header)"
        raise AudioFileError(f"the uploaded file {what}; this server decodes WAV only "
                             "(PCM 8-32 bit, float, or G.711), e.g. ffmpeg -i in.mp3 out.wav")
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise AudioFileError("WAV fmt chunk is truncated")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _EXTENSIBLE and size >= 40 and body + 40 <= len(data):
                tag = struct.unpack_from("<H", data, body + 24)[0]  # the sub-format GUID's first field
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioFileError("WAV data chunk comes before its fmt chunk")
            end = len(data) if size in (0, 0xFFFFFFFF) else min(len(data), body + size)
            return _decode(data[body:end], *fmt)
        pos = body + size + (size & 1)
    raise AudioFileError("WAV file has no data chunk" if fmt else "WAV file has no fmt chunk")


def _decode(raw: bytes, tag: int, channels: int, rate: int, bits: int) -> tuple[np.ndarray, int]:
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioFileError(f"WAV has {channels} channels (1 to {MAX_CHANNELS} supported)")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFileError(f"WAV sample rate {rate} Hz is not supported ({MIN_RATE}-{MAX_RATE})")
    if tag == _PCM and bits in (8, 16, 24, 32):
        samples = pcm_to_float32(raw, bits // 8, channels)
    elif tag == _FLOAT and bits in (32, 64):
        dtype = "<f4" if bits == 32 else "<f8"
        width = bits // 8 * channels
        samples = np.frombuffer(raw[: len(raw) - len(raw) % width], dtype=dtype).astype(np.float32)
        samples = np.nan_to_num(samples).reshape(-1, channels)
    elif tag in (_MULAW, _ALAW) and bits == 8:
        convert = audioop.ulaw2lin if tag == _MULAW else audioop.alaw2lin
        whole = raw[: len(raw) - len(raw) % channels]
        samples = (np.frombuffer(convert(whole, 2), dtype="<i2").astype(np.float32) / 32768.0
                   ).reshape(-1, channels)
    else:
        raise AudioFileError(f"WAV encoding (format {tag:#x}, {bits}-bit) is not supported; "
                             "use PCM 8/16/24/32-bit, float 32/64-bit, μ-law or A-law")
    mono = samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples.reshape(-1)
    return np.ascontiguousarray(np.clip(mono, -1.0, 1.0), dtype=np.float32), rate


def to_rate(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Whole-file resampling (one call: no stream state to keep)."""
    if rate == target or samples.size == 0:
        return samples
    return np.ascontiguousarray(soxr.resample(samples, rate, target, quality="HQ"), dtype=np.float32)
