"""The speaker on its own (no server): ordering, preemption, failure reporting, marks after clear."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from telephony.agents.base import SpeechOutcome
from telephony.playout import PlayoutClock
from telephony.speaker import Speaker
from telephony.twilio_media import MarkName, OutboundEncoder
from tts_core.engines.base import Engine, EngineError, SpeechRequest
from tts_core.engines.synthetic import SyntheticEngine
from tts_core.presets import load_presets

PRESET = load_presets().get("balanced")


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


async def wait_until(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return bool(predicate())


def make_speaker(engine: Engine, wire: Wire) -> Speaker:
    speaker = Speaker(engine=engine, voice_id="synthetic", preset=PRESET, send_text=wire.send,
                      outbound=OutboundEncoder("MZ1"), clock=PlayoutClock(lead_ms=10_000))
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
    marks = [MarkName.parse(m["mark"]["name"]) for m in wire.messages if m["event"] == "mark"]
    assert [m.utterance for m in marks if m.is_end] == [1, 2]
    assert all(len(m["media"]["payload"]) == 216 for m in wire.messages if m["event"] == "media")
    await speaker.aclose()


async def test_a_preemptible_utterance_is_cut_by_the_next_one_and_twilio_is_cleared() -> None:
    wire = Wire()
    wire.echo = False  # nothing is ever confirmed played: the first stays active
    speaker = make_speaker(SyntheticEngine(realtime_factor=0.2), wire)
    first = speaker.submit("A long hold message that the agent may replace at any moment.",
                           preemptible=True)
    assert await wait_until(lambda: "media" in wire.events())
    second = speaker.submit("Your agent is ready.")
    result = await asyncio.wait_for(first.future, 2)
    assert result.outcome is SpeechOutcome.INTERRUPTED
    await asyncio.sleep(0.05)
    assert "clear" in wire.events()
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
    assert await wait_until(lambda: wire.events().count("media") >= 20)
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
    await asyncio.sleep(0.1)
    await speaker.aclose()
    assert utt.future.result().outcome is SpeechOutcome.CANCELLED
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith(("speaker", "render"))] == []
