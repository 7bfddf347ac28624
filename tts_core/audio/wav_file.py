"""The one WAV reader: any common rate, mono or multichannel -> mono float32.

Used for transcription uploads, reference voices (tts_core/voices.py) and agents' ``play`` clips
(telephony/agents/audio_fetch.py); each caller narrows the rates and encodings it accepts.

Transcription clients send whatever their recorder made: 8-48 kHz, 16/24/32-bit PCM, float32,
G.711 (phone recordings), ``WAVE_FORMAT_EXTENSIBLE`` headers, and streamed WAVs whose sizes say
0xFFFFFFFF. The ``wave`` module refuses half of these, hence this small RIFF reader. Other
containers (mp3, ogg, flac, webm, m4a) are recognised by their magic bytes so the refusal can name
them instead of saying "not a WAV".
"""

from __future__ import annotations

import audioop
import struct
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import soxr

from tts_core.audio.arrays import FloatAudio
from tts_core.audio.pcm import pcm_to_float32
from tts_core.errors import InvalidInput


class AudioFileError(InvalidInput, ValueError):
    """The upload is not audio this server can decode; the message says what it is instead."""

    kind = "unsupported_file_format"


PCM, FLOAT, ALAW, MULAW, EXTENSIBLE = 1, 3, 6, 7, 0xFFFE
"""WAV format tags (``EXTENSIBLE`` carries one of the others in its sub-format)."""
ENCODINGS = (PCM, FLOAT, MULAW, ALAW)
_BITS = {PCM: (8, 16, 24, 32), FLOAT: (32, 64), MULAW: (8,), ALAW: (8,)}
_NAMES = {PCM: "PCM 8/16/24/32-bit", FLOAT: "float 32/64-bit", MULAW: "μ-law", ALAW: "A-law"}
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


@dataclass(frozen=True)
class WavInfo:
    """A WAV file's format and its sample bytes (a truncated data chunk keeps what arrived)."""

    encoding: int
    """The format tag (``WAVE_FORMAT_EXTENSIBLE`` resolved to its sub-format): PCM, FLOAT, ALAW, MULAW."""
    channels: int
    rate: int
    bits: int
    data: bytes

    @property
    def frames(self) -> int:
        """Whole sample frames present (all channels); 0 for a format with no sample width."""
        width = self.channels * (self.bits // 8)
        return len(self.data) // width if width else 0

    @property
    def seconds(self) -> float:
        return self.frames / self.rate if self.rate else 0.0


def parse_wav(data: bytes) -> WavInfo:
    """The RIFF/WAVE header walked to its ``data`` chunk; raises AudioFileError (naming another
    container when it sees one). Nothing is decoded yet: callers check the duration first."""
    kind = sniff(data)
    if kind != "wav":
        what = f"looks like {kind}" if kind else "is not a WAV file (no RIFF/WAVE header)"
        raise AudioFileError(f"the file {what}; this server decodes WAV only "
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
            if tag == EXTENSIBLE and size >= 40 and body + 40 <= len(data):
                tag = struct.unpack_from("<H", data, body + 24)[0]  # the sub-format GUID's first field
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioFileError("WAV data chunk comes before its fmt chunk")
            end = len(data) if size in (0, 0xFFFFFFFF) else min(len(data), body + size)
            return WavInfo(*fmt, data=data[body:end])
        pos = body + size + (size & 1)
    raise AudioFileError("WAV file has no data chunk" if fmt else "WAV file has no fmt chunk")


def read_wav(data: bytes, *, min_rate: int = MIN_RATE, max_rate: int = MAX_RATE,
             encodings: Collection[int] = ENCODINGS) -> tuple[np.ndarray, int]:
    """(mono float32 in [-1, 1], sample rate). Raises AudioFileError.

    ``min_rate``/``max_rate`` and ``encodings`` narrow what a caller accepts (a ``play`` clip must
    be at least telephone rate; reference voices are PCM)."""
    info = parse_wav(data)
    check_format(info, min_rate=min_rate, max_rate=max_rate, encodings=encodings)
    return decode(info), info.rate


def check_format(info: WavInfo, *, min_rate: int = MIN_RATE, max_rate: int = MAX_RATE,
                 encodings: Collection[int] = ENCODINGS) -> None:
    """Refuse (AudioFileError) a channel count, rate or encoding this caller does not decode."""
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioFileError(f"WAV has {info.channels} channels (1 to {MAX_CHANNELS} supported)")
    if not min_rate <= info.rate <= max_rate:
        raise AudioFileError(f"WAV at {info.rate} Hz is not supported ({min_rate}-{max_rate} Hz)")
    if info.encoding not in encodings or info.bits not in _BITS.get(info.encoding, ()):
        names = ", ".join(_NAMES[e] for e in encodings)
        raise AudioFileError(f"WAV encoding (format {info.encoding:#x}, {info.bits}-bit) is not "
                             f"supported; use {names}")


def decode(info: WavInfo) -> np.ndarray:
    """The samples of a checked ``WavInfo`` as mono float32 in [-1, 1] (channels averaged)."""
    raw, tag, channels, bits = info.data, info.encoding, info.channels, info.bits
    if tag == PCM:
        samples = pcm_to_float32(raw[: info.frames * channels * bits // 8], bits // 8, channels)
    elif tag == FLOAT:
        dtype = "<f4" if bits == 32 else "<f8"
        width = bits // 8 * channels
        samples = np.frombuffer(raw[: len(raw) - len(raw) % width], dtype=dtype).astype(np.float32)
        samples = np.nan_to_num(samples).reshape(-1, channels)
    else:  # MULAW or ALAW, 8-bit
        convert = audioop.ulaw2lin if tag == MULAW else audioop.alaw2lin
        whole = raw[: len(raw) - len(raw) % channels]
        samples = (np.frombuffer(convert(whole, 2), dtype="<i2").astype(np.float32) / 32768.0
                   ).reshape(-1, channels)
    mono = samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples.reshape(-1)
    return np.ascontiguousarray(np.clip(mono, -1.0, 1.0), dtype=np.float32)


def to_rate(samples: FloatAudio, rate: int, target: int) -> FloatAudio:
    """Whole-file resampling (one call: no stream state to keep)."""
    if rate == target or samples.size == 0:
        return samples
    return np.ascontiguousarray(soxr.resample(samples, rate, target, quality="HQ"), dtype=np.float32)
