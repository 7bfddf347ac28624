"""Per-message CPU of the inbound frame path, in process (issue 11): what one Twilio ``media``
message costs the bridge from the raw text to the listener's decision.

Each scenario drives the call's real inbound objects (``InboundRouter`` -> ``CallerSide`` ->
``CallerListener`` -> ``TurnTracker``/``BargeInDetector``, with an ``EchoReference``) with
``--messages`` media messages in Twilio's compact JSON, and reports CPU microseconds per message
(``time.process_time``, best of ``--repeat``) and per call-second (x 50). No socket, no picows:
the transport's share is measured by scripts/bench_frame_path.py.

Payloads: ``silence`` (digital silence, 0xFF), ``noise`` (line noise at -55 dBFS), ``speech``
(the recorded clips of tests/data/speech, looped, with line noise between them), ``echo`` (the
bot's own prompt coming back 20 dB down). Modes: ``speaking`` (no recogniser, the bot speaks
interruptibly: the barge-in VAD runs), ``idle`` (no recogniser, the bot is silent: frames are not
even decoded), ``listening`` (a recogniser, the bot silent: end-of-turn tracking on every frame),
``listening+speaking`` (both).

    PYTHONPATH=. .venv/bin/python scripts/bench_inbound.py --messages 100000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from telephony.barge_in import FRAME_SAMPLES
from telephony.caller_side import CallerSide
from telephony.listener import CallerListener
from telephony.turns import EchoReference, TurnTracker
from telephony.twilio.inbound import InboundRouter
from tts_core.audio.mulaw import float_to_pcm16, pcm16_to_mulaw
from tts_core.stt import Recogniser, Transcript

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "tests" / "data" / "speech"
SID = "MZ" + "f" * 32
SECONDS = 30
"""Distinct audio per scenario (cycled): longer than any state the detector keeps."""


def _noise(samples: int, dbfs: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(samples).astype(np.float32)
    return white * (10 ** (dbfs / 20) / max(1e-9, float(np.sqrt(np.mean(white ** 2)))))


def payload_audio(kind: str) -> bytes:
    """``SECONDS`` of μ-law audio of one kind."""
    samples = SECONDS * 8000
    if kind == "silence":
        return b"\xff" * samples
    if kind == "noise":
        return pcm16_to_mulaw(float_to_pcm16(_noise(samples, -55.0, 1)))
    clips = [np.frombuffer(pcm_of(path.read_bytes()), np.int16).astype(np.float32) / 32768
             for path in sorted(SPEECH.glob("*.ulaw"))]
    if kind == "echo":
        clips = [clip * 0.1 for clip in clips]  # -20 dB
    parts: list[np.ndarray] = []
    while sum(part.size for part in parts) < samples:
        for clip in clips:
            parts += [_noise(8000, -55.0, len(parts)), clip]
    audio = np.concatenate(parts)[:samples] + _noise(samples, -60.0, 7)
    return pcm16_to_mulaw(float_to_pcm16(audio))


def pcm_of(mulaw: bytes) -> bytes:
    from tts_core.audio.mulaw import mulaw_to_pcm16
    return mulaw_to_pcm16(mulaw).tobytes()


def messages(audio: bytes) -> list[str]:
    out = []
    for index in range(len(audio) // FRAME_SAMPLES):
        frame = audio[index * FRAME_SAMPLES:(index + 1) * FRAME_SAMPLES]
        out.append(json.dumps({
            "event": "media", "sequenceNumber": str(index + 2), "streamSid": SID,
            "media": {"track": "inbound", "chunk": str(index + 1), "timestamp": str(index * 20),
                      "payload": base64.b64encode(frame).decode()}}, separators=(",", ":")))
    return out


class _Recogniser(Recogniser):
    name = "bench"

    async def load(self) -> None:
        return None

    async def transcribe(self, audio: Any, *, language: str | None = None,
                         deadline: float | None = None) -> Transcript:
        return Transcript("words", "en", audio.size / 16000, 0.1)


class _Queue:
    def __init__(self, interruptible: bool) -> None:
        self.interruptible = interruptible

    @property
    def speaking_interruptibly(self) -> bool:
        return self.interruptible


class _Speaker:
    """What ``CallerSide`` reads of the speaker (the real one is a property of its queue too)."""

    def __init__(self, interruptible: bool) -> None:
        self.queue = _Queue(interruptible)

    @property
    def speaking_interruptibly(self) -> bool:
        return self.queue.speaking_interruptibly


class _Stats:
    dtmf_digits = 0

    def protocol_error(self, violation: str) -> int:
        return 1


def build(mode: str, counters: dict[str, int]) -> tuple[InboundRouter, EchoReference]:
    echo = EchoReference(16.0)
    recogniser = _Recogniser() if mode.startswith("listening") else None

    def barge_in() -> None:
        counters["barge_ins"] += 1

    def speech(text: str, final: bool) -> None:
        counters["turns"] += 1

    listener = CallerListener(TurnTracker(), recogniser=recogniser, on_barge_in=barge_in,
                              on_speech=speech, echo=echo, name="bench")
    speaker = _Speaker(interruptible=mode.endswith("speaking"))
    side = CallerSide(call_sid="CAbench", listener=listener, speaker=speaker,  # type: ignore[arg-type]
                      inbox=None, stats=_Stats(), metrics=None)  # type: ignore[arg-type]
    return InboundRouter(SID, side), echo


async def run(mode: str, raws: list[str], count: int,
              bot_frames: list[bytes]) -> tuple[float, dict[str, int]]:
    counters = {"barge_ins": 0, "turns": 0}
    router, echo = build(mode, counters)
    speaking = mode.endswith("speaking")
    chunk = 50
    spent = 0.0
    sent = 0
    while sent < count:
        if speaking:  # the bot's frames keep the echo reference fresh, as the pacer does
            echo.on_sent(bot_frames[(sent // chunk) % len(bot_frames):][:3])
        batch = [raws[(sent + i) % len(raws)] for i in range(chunk)]
        start = time.process_time()
        for raw in batch:
            router.handle(raw)
        spent += time.process_time() - start
        sent += chunk
        if sent % 2000 == 0:
            await asyncio.sleep(0)  # decodes and deliveries the listener spawned
    await router._sink._listener.aclose()  # type: ignore[attr-defined]
    return spent / count * 1e6, counters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--payloads", nargs="+", default=["silence", "noise", "speech", "echo"])
    parser.add_argument("--modes", nargs="+", default=["speaking", "idle", "listening", "listening+speaking"])
    args = parser.parse_args()
    prompt = payload_audio("speech")  # the bot's voice, at the clips' level
    bot_frames = [prompt[i:i + FRAME_SAMPLES] for i in range(0, len(prompt), FRAME_SAMPLES)]
    print(f"{'payload':8} {'mode':20} {'µs/message':>10} {'ms/call-s':>9}  barge-ins turns")
    for kind in args.payloads:
        raws = messages(payload_audio(kind))
        for mode in args.modes:
            best = None
            for _ in range(args.repeat):
                us, counters = asyncio.run(run(mode, raws, args.messages, bot_frames))
                best = us if best is None else min(best, us)
            assert best is not None
            print(f"{kind:8} {mode:20} {best:10.2f} {best * 50 / 1000:9.3f}  "
                  f"{counters['barge_ins']:9} {counters['turns']:5}", flush=True)


if __name__ == "__main__":
    main()
