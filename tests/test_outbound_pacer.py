"""The pacer and its marks on their own: frames then marks in order, typed marks found by their
wire name (never parsed back), overdue marks noticed, nothing of a cut generation sent, a queue
bounded in frames."""

from __future__ import annotations

import asyncio
import json

import pytest

from telephony.outbound import Mark, MarkWatch, Pacer, SpeakerHooks, SpeechQueue, Utterance
from telephony.playout import PlayoutClock
from telephony.twilio.protocol import OutboundEncoder
from tts_core.audio.telephony_format import SILENCE_FRAME
from tts_core.render import FrameBatch, SegmentEnd, SegmentStart


class Wire:
    def __init__(self) -> None:
        self.sent: list[dict] = []  # type: ignore[type-arg]
        self.changed = asyncio.Event()

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))
        self.changed.set()

    def outline(self) -> list[str]:
        return [m["mark"]["name"] if m["event"] == "mark" else m["event"] for m in self.sent]

    async def until(self, count: int) -> None:
        while len(self.sent) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 2)


async def stop(task: asyncio.Task[None], pacer: Pacer) -> None:
    """Cancel the send loop and wait for it; the marks' timer goes too (nothing runs after the test)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    pacer.marks.clear()


def make_pacer(wire: Wire, max_queued_frames: int = 150) -> Pacer:
    watch = MarkWatch(60.0, on_overdue=lambda reason: None)
    return Pacer(send_text=wire.send, outbound=OutboundEncoder("MZ1"), clock=PlayoutClock(lead_ms=10_000),
                 marks=watch, hooks=SpeakerHooks(), max_queued_frames=max_queued_frames)


def utterance(generation: int = 0) -> Utterance:
    queue = SpeechQueue(SpeakerHooks())
    queue.generation = generation
    return queue.create("Hi there.", interruptible=True, preemptible=False)


# ---- marks -------------------------------------------------------------------------------------------
def test_a_mark_carries_its_meaning_and_its_wire_name_made_once() -> None:
    seg, end = Mark.segment_end(3, 7, 2), Mark.utterance_end(3, 7)
    assert (seg.generation, seg.utterance, seg.segment, seg.is_end) == (3, 7, 2, False)
    assert end.is_end and end.segment is None
    # the names Twilio sees are unchanged (the emulator and recordings read them)
    assert seg.wire == "g3-u7-s2"
    assert end.wire == "g3-u7-end"


async def test_an_echo_returns_the_typed_mark_and_settles_every_earlier_one() -> None:
    watch = MarkWatch(60.0, on_overdue=lambda reason: None)
    marks = [Mark.segment_end(0, 1, 0), Mark.segment_end(0, 1, 1), Mark.utterance_end(0, 1)]
    for mark in marks:
        watch.expect(mark, buffered_s=0.0)
    assert watch.echoed(marks[1].wire) is marks[1]
    assert len(watch) == 1  # Twilio echoes in order: the first was played too
    assert watch.echoed(marks[0].wire) is None
    assert watch.echoed("g0-u1-s1") is None  # a duplicate proves nothing more
    assert watch.echoed("not-ours") is None
    watch.clear()  # we sent clear: Twilio echoes what is pending, and that proves nothing
    assert watch.echoed(marks[2].wire) is None


async def test_a_mark_is_overdue_only_after_its_audio_was_due_plus_the_grace() -> None:
    now = [100.0]
    watch = MarkWatch(0.5, on_overdue=lambda reason: None, clock=lambda: now[0])
    watch.expect(Mark.utterance_end(0, 1), buffered_s=1.0)  # its audio plays until t = 101
    now[0] = 101.4
    assert watch.overdue() is None
    now[0] = 101.6
    reason = watch.overdue()
    assert reason is not None and "g0-u1-end not echoed" in reason
    watch.clear()


async def test_the_watch_timer_reports_an_overdue_mark_once_it_is_due() -> None:
    reasons: list[str] = []
    reported = asyncio.Event()

    def on_overdue(reason: str) -> None:
        reasons.append(reason)
        reported.set()

    watch = MarkWatch(0.01, on_overdue=on_overdue)
    watch.expect(Mark.segment_end(2, 5, 0), buffered_s=0.02)
    await asyncio.wait_for(reported.wait(), 2)
    assert len(reasons) == 1 and "g2-u5-s0" in reasons[0]
    watch.clear()


# ---- the pacer -----------------------------------------------------------------------------------------
async def test_frames_go_out_then_the_segment_mark_then_the_tail_and_the_end_mark() -> None:
    wire = Wire()
    pacer = make_pacer(wire)
    sender = asyncio.create_task(pacer.run())
    utt = utterance()
    await pacer.take(utt, SegmentStart(0, "Hi there."))
    await pacer.take(utt, FrameBatch([SILENCE_FRAME] * 3))
    await pacer.take(utt, SegmentEnd(0))
    await pacer.take(utt, FrameBatch([SILENCE_FRAME]))  # the encoder's tail
    await pacer.end_utterance(utt)
    await wire.until(6)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    assert wire.outline() == ["media", "media", "media", "g0-u1-s0", "media", "g0-u1-end"]
    assert [(s.text, s.start, s.end) for s in utt.segments] == [("Hi there.", 0, 3)]
    assert utt.frames_sent == 4 and utt.end_mark_sent_at is not None
    segment_mark = pacer.marks.echoed("g0-u1-s0")
    assert segment_mark is not None and segment_mark.segment == 0
    assert pacer.marks.echoed("g0-u1-end") == Mark.utterance_end(0, 1)
    assert len(pacer.marks) == 0


async def test_nothing_of_a_cut_generation_is_sent() -> None:
    wire = Wire()
    pacer = make_pacer(wire)
    old = utterance(generation=0)
    await pacer.take(old, FrameBatch([SILENCE_FRAME] * 5))
    await pacer.end_utterance(old)
    pacer.cut(1)
    new = utterance(generation=1)
    await pacer.take(new, FrameBatch([SILENCE_FRAME] * 2))
    await pacer.end_utterance(new)
    sender = asyncio.create_task(pacer.run())
    await wire.until(3)
    await stop(sender, pacer)
    assert wire.outline() == ["media", "media", "g1-u1-end"]
    assert old.frames_sent == 0 and pacer.queued_frames == 0
    with pytest.raises(asyncio.CancelledError):  # a renderer still holding old audio stops
        await pacer.take(old, FrameBatch([SILENCE_FRAME]))


async def test_the_queue_is_bounded_in_frames_and_the_sender_makes_room() -> None:
    wire = Wire()
    pacer = make_pacer(wire, max_queued_frames=4)
    utt = utterance()
    await pacer.take(utt, FrameBatch([SILENCE_FRAME] * 3))
    blocked = asyncio.ensure_future(pacer.take(utt, FrameBatch([SILENCE_FRAME] * 3)))
    for _ in range(3):
        await asyncio.sleep(0)  # let it run as far as it can without the sender
    assert not blocked.done() and pacer.queued_frames == 3
    sender = asyncio.create_task(pacer.run())
    await asyncio.wait_for(blocked, 2)
    await wire.until(6)
    await stop(sender, pacer)
    assert utt.frames_sent == 6


async def test_a_cut_while_a_frame_is_being_sent_stops_the_rest_of_its_batch_and_its_mark() -> None:
    wire = Wire()
    pacer = make_pacer(wire)
    send = wire.send
    after = utterance(generation=1)

    async def cut_at_second_frame(text: str) -> None:
        await send(text)
        if len(wire.sent) == 2:
            pacer.cut(1)  # barge-in while the socket send was in progress...
            await pacer.end_utterance(after)  # ...and the next utterance of the new generation

    pacer._send_text = cut_at_second_frame  # type: ignore[assignment]
    utt = utterance(generation=0)
    await pacer.take(utt, FrameBatch([SILENCE_FRAME] * 5))
    await pacer.end_utterance(utt)
    sender = asyncio.create_task(pacer.run())
    await wire.until(3)
    await stop(sender, pacer)
    assert wire.outline() == ["media", "media", "g1-u1-end"]  # nothing of the cut one after the cut
    assert utt.frames_sent == 0 and utt.end_mark_sent_at is None
