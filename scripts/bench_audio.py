#!/usr/bin/env python
"""Outbound audio benchmark: our MulawFrameEncoder vs the public reference server's pipeline.

Baseline (what the reference server does with each chunk an engine yields): resample the chunk on
its own with torchaudio's ``sinc_interp_hann`` kernel (``lowpass_filter_width=64, rolloff=0.99``),
clip to int16, μ-law encode, and pad the chunk's last partial 20 ms frame with silence. torchaudio's
``_get_sinc_resample_kernel`` / ``_apply_sinc_resample_kernel`` are re-implemented here twice, and
torchaudio itself is never imported:

* torch baseline: a line-for-line torch port of the torchaudio 2.x source (kernel built with torch
  ops; ``torch.nn.functional.pad`` by ``(width, width + orig)`` and ``conv1d`` with
  ``stride = orig`` (rates divided by their gcd), cut to ``ceil(new * length / orig)``). This is
  what the reference server runs. Used when ``import torch`` works (run with
  ``torch.set_num_threads(1)``); its columns read "n/a" otherwise. The kernel dtype follows
  torchaudio: ``functional.resample`` passes the waveform's dtype, so for float32 audio the kernel
  is computed in float32 throughout; ``transforms.Resample`` (dtype=None) computes it in float64
  and casts it to float32.
* numpy baseline: a numpy port (float32, im2col + BLAS matmul), which needs no torch; its output
  is checked against the torch port's (max difference printed, must be under 1e-5).

``torchaudio.functional.resample`` rebuilds the kernel on every call; the "cached kernel" columns
time the same pipeline with the kernel built once (``torchaudio.transforms.Resample``).

Ours: one MulawFrameEncoder per utterance (soxr HQ stream kept across chunks; only flush() pads).

Engines yield whole vocoder hops (256 samples for VITS/Piper and most 24 kHz vocoders), so each
nominal chunk size is rounded to a multiple of 256 samples; chunk sizes that happen to be whole
multiples of 20 ms would spare the baseline its per-chunk padding, but not its seams.

Columns:
* SNR: decoded wire audio vs the same resampler run with full context (one-shot), before padding;
  ours is compared over everything but the final 4 ms fade. "exact" = bit-identical bytes.
* alias: worst output level of 4.5-10 kHz tones relative to a 1 kHz tone of equal amplitude, on the
  float signal before μ-law (μ-law rounds anything under about -70 dB to exact silence).
* added: audio on the wire beyond the one-shot length (padding + per-chunk length rounding), in ms
  per second of speech.
* SNR, alias and added are computed with the numpy baseline (the torch baseline gives the same
  samples within float32 rounding).
* ×RT: seconds of audio encoded per CPU second (``time.process_time``, BLAS and torch pinned to 1
  thread), best of several runs, whole pipeline (resample + int16 + μ-law + framing; the torch
  baseline includes its numpy <-> tensor hand-offs, which are zero-copy).
* speed ours/torch, ours/numpy: ours ×RT divided by that baseline's ×RT (in brackets: divided by
  the same baseline with a cached kernel).

Run: ``.venv/bin/python scripts/bench_audio.py`` (~1 min; writes docs/bench_audio.md), or
``--quick`` for a smaller run that only prints (add ``--out PATH`` to write it too). torch is
optional: without it the torch columns read "n/a".
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: must be set before numpy loads its BLAS

import argparse  # noqa: E402
import datetime  # noqa: E402
import itertools  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

import soxr  # noqa: E402

from tts_core.audio import FRAME_BYTES, MULAW_SILENCE, TELEPHONY_RATE, MulawFrameEncoder  # noqa: E402
from tts_core.audio.mulaw import float_to_pcm16, mulaw_to_pcm16, pcm16_to_mulaw  # noqa: E402
from tts_core.engines.synthetic import speechlike  # noqa: E402

try:  # optional: the reference server's own kernel, in torch (torchaudio itself is not imported)
    import torch
except ImportError:
    torch = None
else:
    torch.set_num_threads(1)  # per-core figure, like the BLAS pinning above

OUT_RATE = TELEPHONY_RATE  # the phone line (tts_core/audio/telephony_format.py)
HOP = 256
FADE_SAMPLES = 32  # MulawFrameEncoder's default fade_ms=4.0 at 8 kHz
ALIAS_TONES_HZ = (4500, 5000, 6000, 7000, 8000, 9000, 10000)
TORCH_TOLERANCE = 1e-5  # torch port vs numpy port, per resampled sample (float32 rounding)


# ---------------------------------------------------------------- torchaudio sinc_interp_hann


def sinc_resample_kernel(
    orig_freq: int, new_freq: int, gcd: int, lowpass_filter_width: int = 64, rolloff: float = 0.99
) -> tuple[np.ndarray, int]:
    """numpy port of torchaudio.functional._get_sinc_resample_kernel (hann, float32 input)."""
    orig_freq //= gcd
    new_freq //= gcd
    base_freq = min(orig_freq, new_freq) * rolloff
    width = math.ceil(lowpass_filter_width * orig_freq / base_freq)
    idx = np.arange(-width, width + orig_freq, dtype=np.float32)[None, :] / np.float32(orig_freq)
    t = np.arange(0, -new_freq, -1, dtype=np.float32)[:, None] / np.float32(new_freq) + idx
    t *= np.float32(base_freq)
    np.clip(t, -lowpass_filter_width, lowpass_filter_width, out=t)
    window = np.cos(t * np.float32(math.pi / lowpass_filter_width / 2)) ** 2
    t *= np.float32(math.pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernels = np.where(t == 0, np.float32(1.0), np.sin(t) / t)
    kernels *= window * np.float32(base_freq / orig_freq)
    return kernels.astype(np.float32), width  # (new_freq, 2 * width + orig_freq)


def apply_sinc_resample_kernel(
    x: np.ndarray, orig_freq: int, new_freq: int, gcd: int, kernel: np.ndarray, width: int
) -> np.ndarray:
    """numpy port of torchaudio.functional._apply_sinc_resample_kernel (mono)."""
    orig_freq //= gcd
    new_freq //= gcd
    padded = np.pad(x, (width, width + orig_freq))
    return _strided_conv(padded, orig_freq, kernel)[: math.ceil(new_freq * x.size / orig_freq)]


def _strided_conv(padded: np.ndarray, stride: int, kernel: np.ndarray) -> np.ndarray:
    frames = np.ascontiguousarray(sliding_window_view(padded, kernel.shape[1])[::stride])
    return (frames @ kernel.T).reshape(-1)


def torchaudio_resample(x: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """torchaudio.functional.resample(x, orig, new, lowpass_filter_width=64, rolloff=0.99)."""
    gcd = math.gcd(orig_freq, new_freq)
    kernel, width = sinc_resample_kernel(orig_freq, new_freq, gcd)
    return apply_sinc_resample_kernel(x, orig_freq, new_freq, gcd, kernel, width)


class PerChunkBaseline:
    """The reference server's outbound path: every chunk resampled, encoded and padded alone."""

    def __init__(self, rate: int, *, cache_kernel: bool = False) -> None:
        self.rate = rate
        self.gcd = math.gcd(rate, OUT_RATE)
        self._kernel = sinc_resample_kernel(rate, OUT_RATE, self.gcd) if cache_kernel else None
        self.padded_samples = 0

    def resample(self, chunk: np.ndarray) -> np.ndarray:
        if self._kernel is None:
            return torchaudio_resample(chunk, self.rate, OUT_RATE)
        kernel, width = self._kernel
        return apply_sinc_resample_kernel(chunk, self.rate, OUT_RATE, self.gcd, kernel, width)

    def push(self, chunk: np.ndarray) -> list[bytes]:
        encoded = pcm16_to_mulaw(float_to_pcm16(self.resample(chunk)))
        pad = (-len(encoded)) % FRAME_BYTES
        self.padded_samples += pad
        encoded += bytes([MULAW_SILENCE]) * pad
        return [encoded[i : i + FRAME_BYTES] for i in range(0, len(encoded), FRAME_BYTES)]

    def flush(self) -> list[bytes]:
        return []


# ---------------------------------------------------------------- torchaudio, in torch


def torch_sinc_resample_kernel(
    orig_freq: int,
    new_freq: int,
    gcd: int,
    lowpass_filter_width: int = 64,
    rolloff: float = 0.99,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int]:
    """torch port of torchaudio 2.x functional._get_sinc_resample_kernel (sinc_interp_hann).

    As in torchaudio, ``dtype=None`` (transforms.Resample) builds the kernel in float64 and casts it
    to float32, while functional.resample passes the waveform's dtype (float32 throughout)."""
    orig_freq = int(orig_freq) // gcd
    new_freq = int(new_freq) // gcd
    if lowpass_filter_width <= 0:
        raise ValueError("Low pass filter width should be positive.")
    base_freq = min(orig_freq, new_freq)
    base_freq *= rolloff
    width = math.ceil(lowpass_filter_width * orig_freq / base_freq)
    idx_dtype = dtype if dtype is not None else torch.float64
    idx = (
        torch.arange(-width, width + orig_freq, dtype=idx_dtype, device=device)[None, None] / orig_freq
    )
    t = torch.arange(0, -new_freq, -1, dtype=dtype, device=device)[:, None, None] / new_freq + idx
    t *= base_freq
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    scale = base_freq / orig_freq
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * scale
    if dtype is None:
        kernels = kernels.to(dtype=torch.float32)
    return kernels, width  # (new_freq, 1, 2 * width + orig_freq)


def torch_apply_sinc_resample_kernel(
    waveform: torch.Tensor, orig_freq: int, new_freq: int, gcd: int, kernel: torch.Tensor, width: int
) -> torch.Tensor:
    """torch port of torchaudio 2.x functional._apply_sinc_resample_kernel."""
    if not waveform.is_floating_point():
        raise TypeError(
            f"Expected floating point type for waveform tensor, but received {waveform.dtype}."
        )
    orig_freq = int(orig_freq) // gcd
    new_freq = int(new_freq) // gcd
    shape = waveform.size()  # pack batch
    waveform = waveform.view(-1, shape[-1])
    num_wavs, length = waveform.shape
    waveform = torch.nn.functional.pad(waveform, (width, width + orig_freq))
    resampled = torch.nn.functional.conv1d(waveform[:, None], kernel, stride=orig_freq)
    resampled = resampled.transpose(1, 2).reshape(num_wavs, -1)
    target_length = torch.ceil(torch.as_tensor(new_freq * length / orig_freq)).long()
    resampled = resampled[..., :target_length]
    return resampled.view(shape[:-1] + resampled.shape[-1:])  # unpack batch


def torch_resample(
    waveform: torch.Tensor,
    orig_freq: int,
    new_freq: int,
    lowpass_filter_width: int = 64,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """torchaudio.functional.resample(waveform, orig, new, lowpass_filter_width=64, rolloff=0.99):
    the kernel is rebuilt on every call, in the waveform's dtype."""
    if orig_freq <= 0.0 or new_freq <= 0.0:
        raise ValueError("Original frequency and desired frequecy should be positive")
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(int(orig_freq), int(new_freq))
    kernel, width = torch_sinc_resample_kernel(
        orig_freq, new_freq, gcd, lowpass_filter_width, rolloff, waveform.device, waveform.dtype
    )
    return torch_apply_sinc_resample_kernel(waveform, orig_freq, new_freq, gcd, kernel, width)


class TorchPerChunkBaseline(PerChunkBaseline):
    """PerChunkBaseline with the resampling done by the torch port, as the reference server does
    (``cache_kernel=True``: torchaudio.transforms.Resample, kernel built once with dtype=None)."""

    def __init__(self, rate: int, *, cache_kernel: bool = False) -> None:
        self.rate = rate
        self.gcd = math.gcd(rate, OUT_RATE)
        self._kernel = torch_sinc_resample_kernel(rate, OUT_RATE, self.gcd) if cache_kernel else None
        self.padded_samples = 0

    def resample(self, chunk: np.ndarray) -> np.ndarray:
        waveform = torch.from_numpy(chunk)[None]
        if self._kernel is None:
            out = torch_resample(waveform, self.rate, OUT_RATE)
        else:
            kernel, width = self._kernel
            out = torch_apply_sinc_resample_kernel(
                waveform, self.rate, OUT_RATE, self.gcd, kernel, width
            )
        return out[0].numpy()


def baseline_full_context(x: np.ndarray, rate: int, lengths: list[int]) -> list[np.ndarray]:
    """What the baseline's filter gives for each chunk's output instants with the whole signal
    as context: one-shot resampling, on each chunk's own sample grid."""
    gcd = math.gcd(rate, OUT_RATE)
    orig, new = rate // gcd, OUT_RATE // gcd
    kernel, width = sinc_resample_kernel(rate, OUT_RATE, gcd)
    extended = np.pad(x, (width, width + orig))
    out, start = [], 0
    for n in lengths:
        segment = extended[start : start + n + 2 * width + orig]
        out.append(_strided_conv(segment, orig, kernel)[: math.ceil(new * n / orig)])
        start += n
    return out


# ---------------------------------------------------------------- measurements


def chunk_lengths(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


def split(x: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    edges = np.cumsum([0, *lengths])
    return [x[a:b] for a, b in itertools.pairwise(edges)]


def decoded(payload: bytes) -> np.ndarray:
    return mulaw_to_pcm16(payload).astype(np.float64)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((test - reference) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(reference**2)) / noise)


def ours_snr(x: np.ndarray, rate: int, lengths: list[int]) -> tuple[float, int]:
    encoder = MulawFrameEncoder(rate)
    frames = [f for c in split(x, lengths) for f in encoder.push(c)] + encoder.flush()
    wire = b"".join(frames)
    reference = pcm16_to_mulaw(float_to_pcm16(soxr.resample(x, rate, OUT_RATE, quality="HQ")))
    body = len(reference) - FADE_SAMPLES
    return snr_db(decoded(reference[:body]), decoded(wire[:body])), len(wire) - len(reference)


def baseline_snr(x: np.ndarray, rate: int, lengths: list[int]) -> tuple[float, int]:
    baseline = PerChunkBaseline(rate)
    chunks = split(x, lengths)
    outputs = [baseline.resample(c) for c in chunks]
    references = baseline_full_context(x, rate, lengths)
    test = decoded(pcm16_to_mulaw(float_to_pcm16(np.concatenate(outputs))))
    ref = decoded(pcm16_to_mulaw(float_to_pcm16(np.concatenate(references))))
    one_shot = math.ceil(x.size * OUT_RATE / rate)
    wire = sum(len(f) for c in chunks for f in PerChunkBaseline(rate).push(c))
    return snr_db(ref, test), wire - one_shot


def ramped_tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    n = int(seconds * rate)
    x = 0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)
    ramp = int(0.02 * rate)
    window = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    x[:ramp] *= window
    x[-ramp:] *= window[::-1]
    return x.astype(np.float32)


def ours_float(x: np.ndarray, rate: int, lengths: list[int]) -> np.ndarray:
    """The encoder's signal before int16/μ-law: its soxr stream, fed the same chunks."""
    stream = soxr.ResampleStream(rate, OUT_RATE, 1, dtype="float32", quality="HQ")
    parts = [stream.resample_chunk(c, last=False) for c in split(x, lengths)]
    return np.concatenate([*parts, stream.resample_chunk(np.zeros(0, np.float32), last=True)])


def baseline_float(x: np.ndarray, rate: int, lengths: list[int]) -> np.ndarray:
    baseline = PerChunkBaseline(rate, cache_kernel=True)
    return np.concatenate([baseline.resample(c) for c in split(x, lengths)])


def alias_db(path: Callable, rate: int, size: int, seconds: float) -> float:
    def level(freq: float) -> float:
        x = ramped_tone(freq, rate, seconds)
        y = path(x, rate, chunk_lengths(x.size, size)).astype(np.float64)
        steady = y[int(0.05 * OUT_RATE) : int((seconds - 0.05) * OUT_RATE)]
        return float(np.sqrt(np.mean(steady**2)))

    in_band = level(1000)
    worst = max(level(f) for f in ALIAS_TONES_HZ if f < rate / 2)
    return 20 * math.log10(max(worst, 1e-15) / in_band)


def cpu_seconds(makers: list[Callable], chunks: list[np.ndarray], repeats: list[int]) -> list[float]:
    """Best CPU time of each pipeline (``repeats[i]`` runs of pipeline i); runs are interleaved so a
    busy spell hits all of them."""
    best = [math.inf] * len(makers)
    for run in range(max(repeats)):
        for i, make in enumerate(makers):
            if run >= repeats[i]:
                continue
            encoder = make()
            start = time.process_time()
            for chunk in chunks:
                encoder.push(chunk)
            encoder.flush()
            best[i] = min(best[i], time.process_time() - start)
    return [max(b, 1e-9) for b in best]


@dataclass
class Row:
    rate: int
    chunk_ms: float
    snr: tuple[float, float]
    alias: tuple[float, float]
    added_ms_per_s: tuple[float, float]
    xrt: tuple[float, float, float]  # ours, numpy baseline, numpy baseline with cached kernel
    xrt_torch: tuple[float, float] | None  # torch baseline, with cached kernel (None: no torch)
    torch_diff: tuple[float, float] | None  # max |torch - numpy| per sample: functional, cached


def torch_vs_numpy(rate: int, chunks: list[np.ndarray]) -> tuple[float, float]:
    """Max abs difference between the torch and numpy baselines' resampled chunks, functional and
    cached-kernel variants; asserts they agree within float32 rounding. (The cached torch kernel is
    built in float64 like transforms.Resample's, the numpy one in float32 like functional's.)"""
    worst = []
    for cached in (False, True):
        numpy_base = PerChunkBaseline(rate, cache_kernel=cached)
        torch_base = TorchPerChunkBaseline(rate, cache_kernel=cached)
        diff = 0.0
        for chunk in chunks:
            a, b = numpy_base.resample(chunk), torch_base.resample(chunk)
            assert a.shape == b.shape, (rate, chunk.size, a.shape, b.shape)
            diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b))))
        assert diff < TORCH_TOLERANCE, f"torch and numpy baselines differ by {diff:.2e} at {rate} Hz"
        worst.append(diff)
    return worst[0], worst[1]


def measure(
    rate: int, nominal_ms: int, speech: np.ndarray, tone_s: float, repeats: int, torch_repeats: int
) -> Row:
    size = max(HOP, round(rate * nominal_ms / 1000 / HOP) * HOP)
    lengths = chunk_lengths(speech.size, size)
    chunks = split(speech, lengths)
    seconds = speech.size / rate
    snr_ours, added_ours = ours_snr(speech, rate, lengths)
    snr_base, added_base = baseline_snr(speech, rate, lengths)
    makers: list[Callable] = [
        lambda: MulawFrameEncoder(rate),
        lambda: PerChunkBaseline(rate),
        lambda: PerChunkBaseline(rate, cache_kernel=True),
    ]
    counts = [repeats] * 3
    if torch is not None:
        makers += [
            lambda: TorchPerChunkBaseline(rate),
            lambda: TorchPerChunkBaseline(rate, cache_kernel=True),
        ]
        counts += [torch_repeats] * 2
    times = cpu_seconds(makers, chunks, counts)
    t_ours, t_base, t_cached = times[:3]
    return Row(
        rate=rate,
        chunk_ms=1000 * size / rate,
        snr=(snr_ours, snr_base),
        alias=(alias_db(ours_float, rate, size, tone_s), alias_db(baseline_float, rate, size, tone_s)),
        added_ms_per_s=(added_ours / 8 / seconds, added_base / 8 / seconds),
        xrt=(seconds / t_ours, seconds / t_base, seconds / t_cached),
        xrt_torch=None if torch is None else (seconds / times[3], seconds / times[4]),
        torch_diff=None if torch is None else torch_vs_numpy(rate, chunks),
    )


# ---------------------------------------------------------------- report


def fmt_snr(value: float) -> str:
    return "exact" if math.isinf(value) else f"{value:.1f}"


def fmt_xrt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def fmt_ratio(ours: float, base: float | None, cached: float | None) -> str:
    if base is None or cached is None:
        return "n/a"
    return f"{ours / base:.1f}× ({ours / cached:.1f}×)"


def table(rows: list[Row]) -> str:
    lines = [
        "| source | chunk | SNR ours / base (dB) | alias ours / base (dB) | added ours / base (ms/s) "
        "| ×RT ours | ×RT torch base | ×RT numpy base | ×RT cached kernel, torch / numpy "
        "| speed ours/torch (cached) | speed ours/numpy (cached) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        torch_base, torch_cached = r.xrt_torch if r.xrt_torch is not None else (None, None)
        lines.append(
            f"| {r.rate / 1000:g} kHz | {r.chunk_ms:.1f} ms "
            f"| {fmt_snr(r.snr[0])} / {fmt_snr(r.snr[1])} "
            f"| {r.alias[0]:.0f} / {r.alias[1]:.0f} "
            f"| {r.added_ms_per_s[0]:.1f} / {r.added_ms_per_s[1]:.1f} "
            f"| {fmt_xrt(r.xrt[0])} | {fmt_xrt(torch_base)} | {fmt_xrt(r.xrt[1])} "
            f"| {fmt_xrt(torch_cached)} / {fmt_xrt(r.xrt[2])} "
            f"| {fmt_ratio(r.xrt[0], torch_base, torch_cached)} "
            f"| {fmt_ratio(r.xrt[0], r.xrt[1], r.xrt[2])} |"
        )
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    lines = []
    for rate in sorted({r.rate for r in rows}, reverse=True):
        row = min((r for r in rows if r.rate == rate), key=lambda r: abs(r.chunk_ms - 100))
        ours = row.xrt[0]
        if row.xrt_torch is not None:
            ratio, name = ours / row.xrt_torch[0], "torch baseline"
            other = (
                f"{ours / row.xrt_torch[1]:.1f}× with a cached kernel; vs the numpy stand-in "
                f"{ours / row.xrt[1]:.1f}×, {ours / row.xrt[2]:.1f}× cached"
            )
        else:
            ratio, name = ours / row.xrt[1], "numpy stand-in"
            other = f"{ours / row.xrt[2]:.1f}× with a cached kernel; torch not installed"
        lines.append(
            f"* {rate / 1000:g} kHz, {row.chunk_ms:.0f} ms chunks: ours is {ratio:.1f}× the {name}'s "
            f"speed ({'meets' if ratio >= 20 else 'short of'} the target; {other}), "
            f"SNR {fmt_snr(row.snr[0])} vs {row.snr[1]:.1f} dB, alias "
            f"{row.alias[0]:.0f} vs {row.alias[1]:.0f} dB, added audio {row.added_ms_per_s[0]:.1f} vs "
            f"{row.added_ms_per_s[1]:.1f} ms/s."
        )
    diffs = [r.torch_diff for r in rows if r.torch_diff is not None]
    check = (
        "\n\ntorch baseline vs numpy baseline, same chunks, every row above: max |difference| "
        f"{max(d[0] for d in diffs):.1e} per sample ({max(d[1] for d in diffs):.1e} with cached "
        "kernels, where torch builds the kernel in float64 as transforms.Resample does and the numpy "
        f"port in float32); asserted < {TORCH_TOLERANCE:g}. Full scale is 1.0, one int16 step 3.1e-5."
        if diffs
        else "\n\ntorch is not installed here, so the torch columns read n/a; the numpy stand-in is "
        "faster than the torch baseline (see below), so its ratios understate ours."
    )
    return (
        "Around 100 ms chunks (speed target: ours >= 20× the baseline the reference server runs, "
        "i.e. the torch one):\n\n" + "\n".join(lines) + check
    )


TORCH_NOTE = """\
### Which baseline is the reference server?

The torch one. The reference server calls `torchaudio.functional.resample` on each chunk, which
rebuilds the sinc kernel with torch ops (in the waveform's dtype, float32) and applies it with
`torch.nn.functional.conv1d` (stride = orig rate / gcd: 3 at 24 kHz, 441 at 22.05 kHz). The torch
baseline is that code ported line for line from the torchaudio 2.x source (torchaudio itself is
not installable here and is not imported), timed on one thread (`torch.set_num_threads(1)`); its
cached-kernel column is `torchaudio.transforms.Resample` (kernel built once, in float64, cast to
float32). The numpy baseline is a stand-in that gives the same samples (max difference above) and
lets the script run without torch (the torch columns then read n/a). At 24 kHz it is much faster
than torch: the 24k -> 8k step is a stride-3 single-channel conv1d, which torch's CPU conv1d
handles slowly, while the numpy port does the same arithmetic as one BLAS matmul. So ours/numpy
understates the speed-up over the reference server; ours/torch is the figure to quote."""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy {np.__version__}, "
        f"soxr {soxr.__version__}, "
        + (f"torch {torch.__version__} ({torch.get_num_threads()} thread)" if torch else "no torch")
        + f"; BLAS threads pinned to {os.environ['OPENBLAS_NUM_THREADS']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s of audio, 3 chunk sizes, 1 run")
    parser.add_argument(
        "--out", type=Path, help="markdown file to write (default: docs/bench_audio.md)"
    )
    args = parser.parse_args(argv)

    if args.quick:
        speech_s, tone_s, sizes_ms, repeats, torch_repeats = 3.013, 0.5, (20, 100, 500), 1, 1
    else:  # not a whole number of frames, so ours pays its one end-of-utterance pad too
        speech_s, tone_s, sizes_ms = 10.013, 1.0, (20, 40, 100, 200, 500)
        repeats, torch_repeats = 9, 5
    out = args.out if args.out is not None else (None if args.quick else ROOT / "docs/bench_audio.md")

    warnings.simplefilter("ignore", DeprecationWarning)
    started = time.perf_counter()
    rows = []
    for rate in (24000, 22050):
        speech = speechlike(speech_s, rate, seed=7)
        for ms in sizes_ms:
            rows.append(measure(rate, ms, speech, tone_s, repeats, torch_repeats))
            diffs = rows[-1].torch_diff
            diff = (
                "" if diffs is None else f", max |torch - numpy| {diffs[0]:.1e} ({diffs[1]:.1e} cached)"
            )
            elapsed = time.perf_counter() - started
            print(f"  {rate} Hz, {ms} ms done ({elapsed:.0f} s{diff})", file=sys.stderr)
    result = table(rows)
    print(result)
    verdict = summary(rows)
    print("\n" + verdict)

    if out is not None:
        command = " ".join([".venv/bin/python", "scripts/bench_audio.py", *(argv or sys.argv[1:])])
        doc = (
            "# Outbound audio benchmark: MulawFrameEncoder vs per-chunk resampling\n\n"
            f"Measured {datetime.date.today().isoformat()} with `{command}` "
            f"({speech_s:g} s of speech-like audio per source rate, best of {repeats} timing runs, "
            f"{torch_repeats} for the torch baseline, "
            f"{time.perf_counter() - started:.0f} s wall).\n\n"
            f"Machine: {machine()}.\n\n"
            f"{result}\n\n"
            f"{verdict}\n\n"
            f"{TORCH_NOTE}\n\n"
            "## How to read it\n\n" + __doc__.split("\n\n", 1)[1].rsplit("\n\nRun:", 1)[0] + "\n"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(doc)
        print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
