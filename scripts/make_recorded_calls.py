#!/usr/bin/env python
"""Build realistic recorded calls (docs/recorded-calls.md) for the load test and the call simulator.

The caller is the embedded Piper voice (22.05 kHz float32 -> soxr to 8 kHz -> μ-law), speaking at
the moments a real caller would; agent turns are streamed as LLM-like tokens (~30 ms per token,
seeded jitter). Four calls:

* ``greeting_only``: the bridge speaks the greeting, the caller listens and hangs up;
* ``dialogue_dtmf``: greeting, caller asks, agent answers, caller types digits, agent reads them
  back, agent ends the session;
* ``barge_in``: a long agent turn, the caller talks over it about 1 s into the audio, the agent
  answers briefly and ends;
* ``monologue``: one long agent turn while the caller listens.

Agent turns are timed so that, on a bridge that keeps up, the previous speech has ended before the
caller (or the agent) goes on: speech length is estimated at 65 ms per character (Piper and the
synthetic engine speak about 60) plus 0.35 s for the first audio, then a pause. Only ``barge_in``
overlaps on purpose.

Usage:
  .venv/bin/python scripts/make_recorded_calls.py tests/data/calls           # small (committed)
  .venv/bin/python scripts/make_recorded_calls.py out/calls --long          # ~1 min dialogue/monologue
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from telephony.recorded_call import SAMPLE_RATE, RecordingWriter, agent_turn_messages
from tts_core.audio.mulaw import float_to_pcm16, pcm16_to_mulaw
from tts_core.audio.telephony_format import FRAME_BYTES, FRAME_S

ROOT = Path(__file__).resolve().parents[1]
SECONDS_PER_CHAR = 0.065
FIRST_AUDIO_S = 0.35
TOKEN_MS = 30.0
STREAM_SID = "MZ" + "f" * 32
ACCOUNT_SID = "AC" + "f" * 32


class CallerVoice:
    """Piper speaking as the caller, as 8 kHz μ-law bytes."""

    def __init__(self, peak: float = 0.5) -> None:
        from tts_core.engines import create_engine
        from tts_core.presets import DEFAULT_PRESETS_PATH, load_presets

        self.engine = create_engine("piper", max_concurrency=1)
        self.preset = load_presets(DEFAULT_PRESETS_PATH).get("balanced")
        self.peak = peak
        self._cache: dict[str, bytes] = {}

    async def load(self) -> None:
        await self.engine.load()

    async def say(self, text: str) -> bytes:
        if text in self._cache:
            return self._cache[text]
        from tts_core.engines.base import SpeechRequest

        voice = self.engine.builtin_voices()[0]
        chunks = [c async for c in self.engine.stream(SpeechRequest(text, voice, self.preset))]
        audio = np.concatenate(chunks).astype(np.float32)
        audio = soxr.resample(audio, self.engine.sample_rate, SAMPLE_RATE, quality="HQ")
        loud = np.flatnonzero(np.abs(audio) > 0.02)
        if loud.size:  # trim Piper's leading/trailing silence, keep 40 ms
            pad = int(0.04 * SAMPLE_RATE)
            audio = audio[max(0, loud[0] - pad) : loud[-1] + pad]
        audio = audio * (self.peak / max(1e-6, float(np.abs(audio).max())))
        mulaw = pcm16_to_mulaw(float_to_pcm16(audio))
        self._cache[text] = mulaw
        return mulaw

    async def aclose(self) -> None:
        await self.engine.aclose()


def estimate_speech_s(text: str) -> float:
    return FIRST_AUDIO_S + SECONDS_PER_CHAR * len(text)


@dataclass
class CallBuilder:
    name: str
    description: str
    voice: CallerVoice
    greeting: str = ""
    seed: int = 0
    inbound: bytearray = field(default_factory=bytearray)
    dtmf: list[tuple[float, str]] = field(default_factory=list)
    agent: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def greeting_end(self) -> float:
        return estimate_speech_s(self.greeting) if self.greeting else 0.0

    async def caller_says(self, text: str, at: float) -> float:
        """Caller speech starting at ``at``; returns when it ends."""
        audio = await self.voice.say(text)
        offset = round(at / FRAME_S) * FRAME_BYTES
        if len(self.inbound) < offset + len(audio):
            self.inbound.extend(b"\xff" * (offset + len(audio) - len(self.inbound)))
        self.inbound[offset : offset + len(audio)] = audio
        self.texts.append(f"caller@{at:.2f}: {text}")
        return at + len(audio) / SAMPLE_RATE

    def agent_says(self, text: str, at: float) -> float:
        """Agent turn whose first token is sent at ``at``; returns the estimated end of its audio."""
        jitter: Callable[[], float] = lambda: self._rng.uniform(-10.0, 10.0)  # noqa: E731
        self.agent.extend(agent_turn_messages(text, at, TOKEN_MS, jitter))
        self.texts.append(f"agent@{at:.2f}: {text}")
        return at + estimate_speech_s(text)

    def agent_prompt(self, text: str, at: float) -> float:
        """A whole prompt in one ``text`` message (IVR-style: repeated verbatim across calls, so the
        bridge serves it from its phrase cache); returns the estimated end of its audio."""
        self.agent.append((round(at, 4), {"type": "text", "token": text, "last": True}))
        self.texts.append(f"agent@{at:.2f}: {text}")
        return at + estimate_speech_s(text)

    def press(self, digit: str, at: float) -> float:
        self.dtmf.append((round(at, 4), digit))
        self.texts.append(f"dtmf@{at:.2f}: {digit}")
        return at

    def agent_end(self, at: float) -> None:
        self.agent.append((round(at, 4), {"type": "end"}))

    def write(self, path: Path, stop_at: float) -> int:
        frames = round(stop_at / FRAME_S)
        audio = bytes(self.inbound[: frames * FRAME_BYTES]).ljust(frames * FRAME_BYTES, b"\xff")
        timeline: list[tuple[float, int, str, Any]] = []
        for k in range(frames):
            frame = audio[k * FRAME_BYTES : (k + 1) * FRAME_BYTES]
            timeline.append((round(k * FRAME_S, 4), 1, "media", frame))
        timeline += [(t, 0, "dtmf", d) for t, d in self.dtmf]
        timeline += [(t, 2, "agent", m) for t, m in self.agent]
        timeline.sort(key=lambda item: (item[0], item[1]))
        call_sid = "CA" + hashlib.sha1(self.name.encode()).hexdigest()[:32]
        start_params = {"greeting": self.greeting}

        with path.open("w", encoding="utf-8") as handle:
            writer = RecordingWriter(
                handle, source="make_recorded_calls", call_sid=call_sid, name=self.name,
                description=self.description, caller_voice="piper:joe",
                duration_s=round(stop_at, 2), script=self.texts,
            )
            seq = 1
            writer.twilio(0.0, {"event": "connected", "protocol": "Call", "version": "1.0.0"})
            writer.twilio(0.0, {"event": "start", "sequenceNumber": str(seq), "streamSid": STREAM_SID,
                                "start": {"accountSid": ACCOUNT_SID, "streamSid": STREAM_SID,
                                          "callSid": call_sid, "tracks": ["inbound"],
                                          "customParameters": start_params,
                                          "mediaFormat": {"encoding": "audio/x-mulaw",
                                                          "sampleRate": 8000, "channels": 1}}})
            chunk = 0
            for t, _, kind, data in timeline:
                if kind == "agent":
                    writer.agent(t, data)
                    continue
                seq += 1
                if kind == "media":
                    chunk += 1
                    writer.twilio(t, {"event": "media", "sequenceNumber": str(seq),
                                      "streamSid": STREAM_SID,
                                      "media": {"track": "inbound", "chunk": str(chunk),
                                                "timestamp": str(round(t * 1000)),
                                                "payload": base64.b64encode(data).decode()}})
                else:
                    writer.twilio(t, {"event": "dtmf", "streamSid": STREAM_SID,
                                      "sequenceNumber": str(seq),
                                      "dtmf": {"track": "inbound_track", "digit": data}})
            writer.twilio(round(stop_at, 4), {"event": "stop", "sequenceNumber": str(seq + 1),
                                              "streamSid": STREAM_SID,
                                              "stop": {"accountSid": ACCOUNT_SID, "callSid": call_sid}})
            writer.close()
        return path.stat().st_size


# ---------------------------------------------------------------------------------- the calls

PAUSE_S = 0.8
"""Silence after estimated end of speech before the other side goes on."""
LLM_DELAY_S = 0.6
"""From the end of caller speech to the agent's first token."""


async def greeting_only(voice: CallerVoice, long: bool) -> tuple[CallBuilder, float]:
    call = CallBuilder("greeting_only", "The bridge speaks the greeting; the caller listens and "
                       "hangs up.", voice, greeting="Thanks for calling Acme Bank. How can I help "
                       "you today?", seed=1)
    return call, call.greeting_end() + (3.0 if long else 1.0)


async def dialogue_dtmf(voice: CallerVoice, long: bool) -> tuple[CallBuilder, float]:
    call = CallBuilder("dialogue_dtmf", "Greeting, caller asks, agent asks for digits, caller types "
                       "them, agent reads back and ends the session.", voice,
                       greeting="Hi, Acme support.", seed=2)
    t = call.greeting_end() + PAUSE_S
    rounds = (
        [("Where is my order?", "Sure. Type your order number, then press pound.", "42#",
          "Thanks. Order forty two ships tomorrow. Goodbye!")]
        if not long else
        [("Hi, where is my order?", "Sure, I can check that for you. Please type your order "
          "number on the keypad, then press pound.", "4217#",
          "Thanks. Order four two one seven left our warehouse this morning and should arrive on "
          "Thursday, between nine and noon. Is there anything else I can help with?"),
         ("Yes, can I change the delivery address?", "Of course. For security, please enter the "
          "last four digits of the phone number on the account, then press pound.", "0199#",
          "Thank you, that matches. I have sent a secure link by text message where you can "
          "enter the new address. The change takes effect within the hour."),
         ("Great. And what about returns?", "You can return anything within thirty days. Press "
          "one to get a prepaid return label by email, or two to hear the return policy.", "1",
          "Done. The return label is on its way to the email address on file. Thanks for calling "
          "Acme, and have a great day. Goodbye!")]
    )
    for ask, prompt, digits, answer in rounds:
        t = await call.caller_says(ask, t) + LLM_DELAY_S
        t = call.agent_says(prompt, t) + PAUSE_S
        for digit in digits:
            t = call.press(digit, t) + 0.35
        t = call.agent_says(answer, t + 0.25) + PAUSE_S
    call.agent_end(t - PAUSE_S + 0.1)
    return call, t + 0.4


async def barge_in(voice: CallerVoice, long: bool) -> tuple[CallBuilder, float]:
    call = CallBuilder("barge_in", "A long agent turn; the caller talks over it about 1 s into the "
                       "audio; the agent answers briefly and ends.", voice, seed=3)
    long_turn = ("Let me walk you through all of our current plans. The basic plan costs ten dollars "
                 "a month and includes unlimited calls. The premium plan adds international minutes "
                 "and a second line, and the family plan covers up to five people.")
    if long:
        long_turn += (" All plans come with free voicemail, caller ID and call waiting, and you can "
                      "switch between plans at any time without a fee.")
    first_token = 0.3
    call.agent_says(long_turn, first_token)
    speech_starts = first_token + FIRST_AUDIO_S
    t = await call.caller_says("Sorry, can I just talk to a person?", speech_starts + 1.0)
    t = call.agent_says("Of course. Connecting you now.", t + LLM_DELAY_S) + PAUSE_S
    call.agent_end(t - PAUSE_S + 0.1)
    return call, t + 0.4


async def monologue(voice: CallerVoice, long: bool) -> tuple[CallBuilder, float]:
    call = CallBuilder("monologue", "One long agent turn while the caller listens.", voice, seed=4)
    text = ("Here is a summary of your account. Your current balance is two hundred and twelve "
            "dollars, and your next payment is due on the fifteenth of the month.")
    if long:
        text += (" Over the last thirty days you made fourteen purchases, the largest of which was "
                 "eighty dollars at the hardware store on the third. You also received two "
                 "deposits, one from your employer and one transfer from your savings account. "
                 "Your credit limit was raised last week to five thousand dollars, and you have "
                 "three thousand one hundred available. Your rewards balance is nine hundred "
                 "points, which you can redeem for a statement credit of nine dollars, or save "
                 "towards a gift card. If you would like to set up automatic payments, you can do "
                 "that in the mobile app under settings, payments, and then autopay. Paperless "
                 "statements are already turned on for this account, so your next statement will "
                 "arrive by email on the first of the month. Thank you for being a customer.")
    end = call.agent_says(text, 0.3)
    return call, end + 1.0


async def ivr_prompts(voice: CallerVoice, long: bool) -> tuple[CallBuilder, float]:
    call = CallBuilder("ivr_prompts", "Greeting and fixed prompts answered by keypad digits: every "
                       "prompt is said verbatim on every call (the phrase cache's workload).", voice,
                       greeting="Thanks for calling Acme. Press one for orders, or two for billing.",
                       seed=5)
    t = call.greeting_end() + PAUSE_S
    prompts = [("1", "You chose orders. Please enter your order number, then press pound."),
               ("#", "Thank you. Your order has shipped and will arrive on Thursday."),
               ("2", "For billing, please stay on the line while we connect you.")]
    for digit, prompt in prompts * (3 if long else 1):
        t = call.press(digit, t) + 0.3
        t = call.agent_prompt(prompt, t) + PAUSE_S
    return call, t


SCENARIOS = {"greeting_only": greeting_only, "ivr_prompts": ivr_prompts,
             "dialogue_dtmf": dialogue_dtmf, "barge_in": barge_in, "monologue": monologue}


async def build(out_dir: Path, names: list[str], long: bool) -> list[tuple[str, float, int]]:
    voice = CallerVoice()
    await voice.load()
    built = []
    try:
        for name in names:
            call, stop_at = await SCENARIOS[name](voice, long)
            size = call.write(out_dir / f"{name}.jsonl", stop_at)
            built.append((name, stop_at, size))
    finally:
        await voice.aclose()
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="directory for the <name>.jsonl files")
    parser.add_argument("--long", action="store_true",
                        help="longer versions (dialogue and monologue about a minute each)")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="build only these")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    built = asyncio.run(build(args.out_dir, args.only or list(SCENARIOS), args.long))
    for name, seconds, size in built:
        print(f"{args.out_dir / (name + '.jsonl')}: {seconds:5.1f} s, {size / 1024:6.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
