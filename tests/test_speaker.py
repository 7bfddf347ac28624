"""The speaker on its own (no server): ordering, preemption, failure reporting, marks after clear."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import NamedTuple

import pytest

from telephony.agents.base import SpeechOutcome
from telephony.playout import PlayoutClock
from telephony.speaker import Speaker
from telephony.twilio.protocol import OutboundEncoder
from tests.conftest import eventually
from tts_core.engines.base import Engine, EngineError, SpeechRequest
from tts_core.engines.synthetic import SyntheticEngine
from tts_core.phrase_cache import PhraseCache
from tts_core.presets import load_presets

PRESET = load_presets().get("balanced")


_WIRE_MARK = re.compile(r"g(\d+)-u(\d+)-(?:s(\d+)|end)")


class WireMark(NamedTuple):
    """A mark name as the tests read it off the wire (the bridge itself never parses its marks back)."""

    utterance: int
    segment: int | None

    @property
    def is_end(self) -> bool:
        return self.segment is None


def wire_mark(name: str) -> WireMark:
    match = _WIRE_MARK.fullmatch(name)
    assert match is not None, f"not one of the bridge's mark names: {name!r}"
    return WireMark(int(match[2]), None if match[3] is None else int(match[3]))


class Wire:
    """Collects what the speaker sends and echoes marks at once (as if played instantly)."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.speaker: Speaker | None = None
        self.echo = True

    async def send(self, text: str) -> None:
        message = json.loads(text)
        self.messages.append(message)
        if message["event"] == "mark" and self.echo and self.speaker is not None:
            asyncio.get_running_loop().call_soon(self.speaker.on_mark, message["mark"]["name"])

    def events(self) -> list[str]:
        return [m["event"] for m in self.messages]


def make_speaker(engine: Engine, wire: Wire, cache: PhraseCache | None = None) -> Speaker:
    speaker = Speaker(engine=engine, voice_id="synthetic", preset=PRESET, send_text=wire.send,
                      outbound=OutboundEncoder("MZ1"), clock=PlayoutClock(lead_ms=10_000),
                      phrase_cache=cache)
    wire.speaker = speaker
    speaker.start()
    return speaker


async def test_utterances_play_in_order_and_each_ends_with_its_end_mark() -> None:
    wire = Wire()
    speaker = make_speaker(SyntheticEngine(), wire)
    first = speaker.submit("First sentence here.")
    second = speaker.submit("And a second one.")
    results = await asyncio.wait_for(asyncio.gather(first.future, second.future), 5)
    assert [r.outcome for r in results] == [SpeechOutcome.PLAYED, SpeechOutcome.PLAYED]
    assert [r.heard_text for r in results] == ["First sentence here.", "And a second one."]
    marks = [wire_mark(m["mark"]["name"]) for m in wire.messages if m["event"] == "mark"]
    assert [m.utterance for m in marks if m.is_end] == [1, 2]
    assert all(len(m["media"]["payload"]) == 216 for m in wire.messages if m["event"] == "media")
    await speaker.aclose()


async def test_a_preemptible_utterance_is_cut_by_the_next_one_and_twilio_is_cleared() -> None:
    wire = Wire()
    wire.echo = False  # nothing is ever confirmed played: the first stays active
    speaker = make_speaker(SyntheticEngine(realtime_factor=0.2), wire)
    first = speaker.submit("A long hold message that the agent may replace at any moment.",
                           preemptible=True)
    await eventually(lambda: "media" in wire.events())
    second = speaker.submit("Your agent is ready.")
    result = await asyncio.wait_for(first.future, 2)
    assert result.outcome is SpeechOutcome.INTERRUPTED
    await eventually(lambda: "clear" in wire.events(), what="Twilio's buffer cleared")
    assert not second.future.done()
    await speaker.aclose()
    assert second.future.result().outcome is SpeechOutcome.CANCELLED


class FailingEngine(SyntheticEngine):
    async def _stream(self, request: SpeechRequest) -> AsyncIterator:  # type: ignore[override]
        if "fail" in request.text:
            raise EngineError("model exploded")
        async for chunk in super()._stream(request):
            yield chunk


async def test_an_engine_failure_is_reported_with_its_reason_and_the_next_utterance_still_plays() -> None:
    wire = Wire()
    speaker = make_speaker(FailingEngine(), wire)
    bad = speaker.submit("This will fail.")
    good = speaker.submit("This works.")
    bad_result, good_result = await asyncio.wait_for(asyncio.gather(bad.future, good.future), 5)
    assert bad_result.outcome is SpeechOutcome.FAILED
    assert "model exploded" in (bad_result.error or "")
    assert good_result.outcome is SpeechOutcome.PLAYED
    await speaker.aclose()


async def test_marks_echoed_after_a_clear_do_not_count_as_played() -> None:
    wire = Wire()
    wire.echo = False
    speaker = make_speaker(SyntheticEngine(realtime_factor=0.2), wire)
    utt = speaker.submit("Something long enough to be interrupted while it plays out loud.")
    await eventually(lambda: wire.events().count("media") >= 20)
    old_marks = [m["mark"]["name"] for m in wire.messages if m["event"] == "mark"]
    result = await speaker.interrupt()
    assert result is not None and result.outcome is SpeechOutcome.INTERRUPTED
    for name in old_marks:  # Twilio echoes every pending mark after clear
        speaker.on_mark(name)
    assert utt.future.result().outcome is SpeechOutcome.INTERRUPTED
    assert speaker.generation == 1
    await speaker.aclose()


async def test_aclose_cancels_everything_and_leaves_no_task() -> None:
    wire = Wire()
    wire.echo = False
    speaker = make_speaker(SyntheticEngine(realtime_factor=0.5), wire)
    utt = speaker.submit("Speech that will never finish because the call ends.")
    await eventually(lambda: "media" in wire.events(), what="speaking started")
    await speaker.aclose()
    assert utt.future.result().outcome is SpeechOutcome.CANCELLED
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith(("speaker", "render"))] == []


class CountingEngine(SyntheticEngine):
    def __init__(self, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.requests: list[str] = []

    async def _stream(self, request: SpeechRequest) -> AsyncIterator:  # type: ignore[override]
        self.requests.append(request.text)
        async for chunk in super()._stream(request):
            yield chunk


def media_and_segment_marks(wire: Wire) -> list[str]:
    out = []
    for m in wire.messages:
        if m["event"] == "mark":
            mark = wire_mark(m["mark"]["name"])
            out.append("end" if mark.is_end else f"s{mark.segment}")
        elif m["event"] == "media" and (not out or out[-1] != "media"):
            out.append("media")
    return out


PROMPT = "For billing, press one. For appointments, press two. To hear this again, press nine."


@pytest.mark.slow
async def test_calls_saying_the_same_prompt_at_once_share_one_synthesis() -> None:
    engine, cache = CountingEngine(realtime_factor=0.05), PhraseCache()
    wires = [Wire() for _ in range(5)]
    speakers = [make_speaker(engine, wire, cache) for wire in wires]
    utts = [speaker.submit(PROMPT) for speaker in speakers]
    results = await asyncio.wait_for(asyncio.gather(*(u.future for u in utts)), 10)
    assert [r.outcome for r in results] == [SpeechOutcome.PLAYED] * 5
    assert len(engine.requests) == 3  # three segments, rendered once for all five calls
    payloads = [[m["media"]["payload"] for m in w.messages if m["event"] == "media"] for w in wires]
    assert all(p == payloads[0] for p in payloads) and len(payloads[0]) > 50
    for speaker in speakers:
        await speaker.aclose()


async def test_a_phrase_from_the_cache_carries_the_same_segment_marks_as_a_live_rendering() -> None:
    live_wire, cached_wire, cache = Wire(), Wire(), PhraseCache()
    live = make_speaker(SyntheticEngine(), live_wire)
    await asyncio.wait_for(live.submit(PROMPT).future, 5)
    first = make_speaker(SyntheticEngine(), Wire(), cache)
    await asyncio.wait_for(first.submit(PROMPT).future, 5)  # renders it into the cache
    cached = make_speaker(SyntheticEngine(), cached_wire, cache)
    result = await asyncio.wait_for(cached.submit(PROMPT).future, 5)
    assert result.heard_text == PROMPT
    assert media_and_segment_marks(cached_wire) == media_and_segment_marks(live_wire) == [
        "media", "s0", "media", "s1", "media", "s2", "media", "end"]
    assert [m["media"]["payload"] for m in cached_wire.messages if m["event"] == "media"] == [
        m["media"]["payload"] for m in live_wire.messages if m["event"] == "media"]
    for speaker in (live, first, cached):
        await speaker.aclose()


async def test_barge_in_on_the_only_call_rendering_a_phrase_stops_the_engine() -> None:
    engine, cache, wire = CountingEngine(realtime_factor=0.5), PhraseCache(), Wire()
    wire.echo = False
    speaker = make_speaker(engine, wire, cache)
    utt = speaker.submit(PROMPT)
    await eventually(lambda: wire.events().count("media") >= 5)
    result = await speaker.interrupt()
    assert result is not None and result.outcome is SpeechOutcome.INTERRUPTED
    await eventually(lambda: engine.busy_slots == 0, timeout=1.0)
    assert not cache.has(speaker.cache_key(PROMPT))  # nothing half-rendered is kept
    assert utt.future.result().outcome is SpeechOutcome.INTERRUPTED
    await speaker.aclose()


@pytest.mark.slow
async def test_a_call_that_leaves_does_not_stop_the_phrase_for_the_others() -> None:
    engine, cache = CountingEngine(realtime_factor=0.1), PhraseCache()
    leaving, staying = Wire(), Wire()
    leaving.echo = False
    first, second = make_speaker(engine, leaving, cache), make_speaker(engine, staying, cache)
    first.submit(PROMPT)
    kept = second.submit(PROMPT)
    await eventually(lambda: leaving.events().count("media") >= 3)
    await first.aclose()  # hang-up
    assert (await asyncio.wait_for(kept.future, 10)).outcome is SpeechOutcome.PLAYED
    assert len(engine.requests) == 3
    await second.aclose()


class SlowWire:
    """Like media_stream.send_text: one lock, and a send that yields (socket back-pressure)."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.lock = asyncio.Lock()

    async def send(self, text: str) -> None:
        async with self.lock:
            await asyncio.sleep(0.005)  # the transport's drain() under back-pressure
            self.messages.append(json.loads(text))


@pytest.mark.slow
async def test_no_media_is_sent_after_clear() -> None:
    wire = SlowWire()
    speaker = Speaker(engine=SyntheticEngine(chunk_ms=1000), voice_id="synthetic", preset=PRESET,
                      send_text=wire.send, outbound=OutboundEncoder("MZ1"),
                      clock=PlayoutClock(lead_ms=240))
    speaker.start()
    utt = speaker.submit("A long answer that keeps going and going so the caller can talk over it "
                         "for quite a while before it would ever end on its own.")
    await eventually(lambda: sum(m["event"] == "media" for m in wire.messages) >= 3)
    result = await speaker.interrupt()
    assert result is not None and result.outcome is SpeechOutcome.INTERRUPTED
    await asyncio.sleep(0.3)
    events = [m["event"] for m in wire.messages]
    after = events[events.index("clear") + 1:]
    queued = speaker.pacer.queued_frames
    await speaker.aclose()
    assert utt.future.result().outcome is SpeechOutcome.INTERRUPTED
    assert after.count("media") == 0, f"{after.count('media')} stale frames sent after clear; " \
                                      f"_queued_frames={queued}"


async def test_barge_in_does_not_cut_a_queued_non_interruptible_utterance() -> None:
    wire = Wire()
    wire.echo = False
    speaker = make_speaker(SyntheticEngine(realtime_factor=0.2), wire)
    first = speaker.submit("Here is some chatter the caller may talk over whenever they like.")
    legal = speaker.submit("This call may be recorded.", interruptible=False)
    await eventually(lambda: wire.events().count("media") >= 10)
    await speaker.interrupt()
    outcome = legal.future.result().outcome if legal.future.done() else None
    await speaker.aclose()
    assert first.future.result().outcome is SpeechOutcome.INTERRUPTED
    assert outcome is None, f"non-interruptible utterance was cut by barge-in: {outcome}"


async def test_preemption_only_cuts_preemptible_speech() -> None:
    wire = Wire()  # marks echoed at once
    speaker = make_speaker(SyntheticEngine(realtime_factor=0.5), wire)
    greeting = speaker.submit("Hi.")                                     # not preemptible
    hold = speaker.submit("Please hold while we find an agent for you, this may take a while.",
                          preemptible=True)
    notice = speaker.submit("This call may be recorded for quality purposes.")  # NOT preemptible
    await eventually(lambda: greeting.future.done() and speaker.queue.active == [hold])
    speaker.submit("Your agent is ready.")  # pre-empts the hold message...
    outcome = notice.future.result().outcome if notice.future.done() else None
    await speaker.aclose()
    assert hold.future.result().outcome is SpeechOutcome.INTERRUPTED
    # ...but the queued notice was never preemptible
    assert outcome is None, f"a queued non-preemptible utterance was pre-empted: {outcome}"


class SlowFailingEngine(SyntheticEngine):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def _stream(self, request: SpeechRequest) -> AsyncIterator:  # type: ignore[override]
        self.calls += 1
        await asyncio.sleep(0.05)
        raise EngineError("engine timed out")
        yield


async def test_a_failed_rendering_is_reported_once_not_tried_again_live() -> None:
    engine = SlowFailingEngine()
    speaker = make_speaker(engine, Wire(), PhraseCache())
    result = await asyncio.wait_for(speaker.say("Your order has shipped."), 5)
    await speaker.aclose()
    assert result.outcome is SpeechOutcome.FAILED and engine.calls == 1


class StoppedPeer(Wire):
    """Echoes marks (as Twilio does when it plays them) until it stops; sends never block, as
    when the kernel's socket buffers still have room."""

    def __init__(self, echo_first: int) -> None:
        super().__init__()
        self.echo_first = echo_first
        self.echoed: list[str] = []

    async def send(self, text: str) -> None:
        message = json.loads(text)
        self.messages.append(message)
        if message["event"] == "mark" and len(self.echoed) < self.echo_first:
            self.echoed.append(message["mark"]["name"])
            asyncio.get_running_loop().call_soon(self.speaker.on_mark, message["mark"]["name"])


@pytest.mark.slow
async def test_marks_not_echoed_after_their_audio_was_due_fail_the_utterance_and_stop_sending() -> None:
    """Issue 10 finding 5: a Twilio side that stops playing/reading is noticed by its marks."""
    wire = StoppedPeer(echo_first=1)
    stalls: list[str] = []
    # Fast engine, short lead: the pacer sends at real time, so frames keep going out while
    # nothing is echoed; 1 s of grace after each mark's audio was due.
    speaker = Speaker(engine=SyntheticEngine(), voice_id="synthetic", preset=PRESET,
                      send_text=wire.send, outbound=OutboundEncoder("MZ1"),
                      clock=PlayoutClock(lead_ms=100), mark_grace_s=0.3)
    speaker.hooks.on_stalled = stalls.append
    wire.speaker = speaker
    speaker.start()
    utt = speaker.submit("First part. Second part of it. Third part of the long greeting. "
                         "Fourth part that nobody will ever hear. Fifth part.")
    result = await asyncio.wait_for(utt.future, 3)
    assert result.outcome is SpeechOutcome.FAILED, result
    assert "not echoed" in (result.error or "")
    assert result.heard_text == "First part."  # up to the last echoed mark
    assert len(stalls) == 1 and speaker.stalled
    sent = len(wire.messages)
    late = speaker.submit("Anything more?")
    assert (await asyncio.wait_for(late.future, 1)).outcome is SpeechOutcome.FAILED
    assert len(wire.messages) == sent, "nothing more is sent to a peer that stopped playing"
    await speaker.aclose()


@pytest.mark.slow
async def test_a_peer_that_echoes_every_mark_in_time_is_never_declared_stalled() -> None:
    wire = Wire()  # echoes at once
    stalls: list[str] = []
    speaker = Speaker(engine=SyntheticEngine(), voice_id="synthetic", preset=PRESET,
                      send_text=wire.send, outbound=OutboundEncoder("MZ1"),
                      clock=PlayoutClock(lead_ms=100), mark_grace_s=0.05)
    speaker.hooks.on_stalled = stalls.append
    wire.speaker = speaker
    speaker.start()
    results = await asyncio.wait_for(asyncio.gather(
        speaker.submit("One. Two.").future, speaker.submit("Three.").future), 5)
    assert [r.outcome for r in results] == [SpeechOutcome.PLAYED] * 2
    await asyncio.sleep(0.2)
    assert stalls == [] and not speaker.stalled
    await speaker.aclose()
