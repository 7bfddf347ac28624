"""Run the REAL Chatterbox package through the bridge's engine adapter and report what it did.

On a GPU machine with a checkpoint (README, "Chatterbox"), this is the figure-producing run:

    PYTHONPATH=. .venv/bin/python scripts/check_chatterbox.py --checkpoint-dir /srv/chatterbox \
        --device cuda --replicas 2 --voice voices/alice.wav --utterances 10

It loads the replicas, warms each one, speaks ``--utterances`` phrases with a cloned voice (two at a
time when there are several replicas) and prints JSON: load time, per-replica warmup, first-chunk
latency, real-time factor, and how the voice's conditioning was obtained (prepared once, then memory;
after ``--restart``, from the disk cache). ``--max-chunks`` stops each utterance early, which also
exercises cancellation inside the real ``generate_stream``.

Without weights it can still check the adapter against the installed package's real code:
a checkpoint made from randomly initialised modules (``ChatterboxTTS``'s own classes) speaks noise,
never an end-of-speech token, so use ``--max-chunks`` and ``--no-warmup`` there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

import numpy as np

from tts_core.engines import SpeechRequest
from tts_core.engines.chatterbox import ChatterboxEngine
from tts_core.presets import load_presets
from tts_core.voices import Voice, decode_wav

PHRASES = [
    "Thanks for calling, how can I help you today?",
    "Let me check that for you, it will only take a moment.",
    "Your appointment is confirmed for Tuesday at three in the afternoon.",
    "Is there anything else I can do for you?",
]


def reference_voice(path: str | None) -> Voice:
    if path:
        audio, rate = decode_wav(Path(path))
        return Voice(id=Path(path).stem, audio=audio, sample_rate=rate)
    rate = 16000
    t = np.arange(3 * rate) / rate  # a gliding harmonic tone: enough for the encoders to run on
    f0 = 140 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    audio = sum(0.5**k * np.sin(k * phase) for k in range(1, 6)) * 0.3
    return Voice(id="tone", audio=audio.astype(np.float32), sample_rate=rate)


async def speak(engine: ChatterboxEngine, request: SpeechRequest, max_chunks: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    first_ms: float | None = None
    samples = chunks = 0
    async with aclosing(engine.stream(request)) as stream:
        async for chunk in stream:
            if first_ms is None:
                first_ms = (time.perf_counter() - started) * 1000
            samples += chunk.size
            chunks += 1
            if max_chunks and chunks >= max_chunks:
                break
    wall = time.perf_counter() - started
    audio_s = samples / engine.sample_rate
    return {"text": request.text[:40], "first_chunk_ms": round(first_ms or 0.0, 1), "chunks": chunks,
            "audio_s": round(audio_s, 3), "wall_s": round(wall, 3),
            "rtf": round(wall / audio_s, 3) if audio_s else None}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    presets = load_presets()
    preset = presets.get(args.preset)
    voice = reference_voice(args.voice)
    conds_dir = Path(args.conds_dir or tempfile.mkdtemp(prefix="chatterbox-conds-"))
    report: dict[str, Any] = {"checkpoint_dir": args.checkpoint_dir, "preset": preset.name,
                              "voice": voice.id, "conds_dir": str(conds_dir), "runs": []}
    for _ in range(2 if args.restart else 1):
        engine = ChatterboxEngine(args.checkpoint_dir, device=args.device, replicas=args.replicas,
                                  conds_dir=conds_dir, warmup_on_load=not args.no_warmup)
        started = time.perf_counter()
        await engine.load()
        run: dict[str, Any] = {"load_s": round(time.perf_counter() - started, 2),
                               "devices": engine.devices, "sample_rate": engine.sample_rate,
                               "builtin_voices": engine.builtin_voices(),
                               "warmup_builtin_ms": engine.last_warmup_ms}
        if not args.no_warmup:
            await engine.warmup(voice.id, preset, voice)
            run["warmup_cloned_ms"] = engine.last_warmup_ms
        results: list[dict[str, Any]] = []
        parallel = max(1, len(engine.devices))
        for start in range(0, args.utterances, parallel):
            batch = [SpeechRequest(text=PHRASES[i % len(PHRASES)], voice_id=voice.id, preset=preset,
                                   voice=voice, first_in_turn=True)
                     for i in range(start, min(args.utterances, start + parallel))]
            results += await asyncio.gather(*(speak(engine, r, args.max_chunks) for r in batch))
        firsts = [r["first_chunk_ms"] for r in results]
        run["utterances"] = results
        run["first_chunk_ms_p50"] = round(statistics.median(firsts), 1) if firsts else None
        run["conditioning"] = engine.conditioning.stats()
        run["stats"] = {"utterances": engine.stats.utterances, "cancelled": engine.stats.cancelled,
                        "failures": engine.stats.failures,
                        "ignored_params": sorted(engine.stats.ignored_params)}
        # An utterance stopped by --max-chunks finishes its chunk in flight, then frees its replica.
        waited = time.perf_counter()
        for _poll in range(6000):
            if not engine.busy_slots:
                break
            await asyncio.sleep(0.05)
        run["replicas_free_after_ms"] = round((time.perf_counter() - waited) * 1000, 1)
        run["busy_after"] = engine.busy_slots
        await engine.aclose()
        report["runs"].append(run)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--voice", help="reference WAV to clone (default: a generated tone)")
    parser.add_argument("--preset", default="realtime")
    parser.add_argument("--utterances", type=int, default=4)
    parser.add_argument("--max-chunks", type=int, default=None, help="stop each utterance after N chunks")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--restart", action="store_true",
                        help="run twice with a fresh engine: the second loads the voice from disk")
    parser.add_argument("--conds-dir", help="prepared-voice cache (default: a temporary directory)")
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # the package prints as it loads: keep stdout JSON
        report = asyncio.run(run(args))
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
