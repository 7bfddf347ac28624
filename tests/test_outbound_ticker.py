"""The pacer's shared ticker: one timer per process for every call waiting for room in Twilio's
buffer, synchronous sends while the socket takes data at once, the waiting path (and the stall
watchdog) once it does not, nothing left behind by a call that ends, nothing of a cut sent."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from telephony.outbound import Mark, MarkWatch, Pacer, SpeakerHooks, SpeechQueue, Utterance
from telephony.outbound.ticker import Ticker, ticker_for
from telephony.playout import PlayoutClock
from telephony.twilio.picows_socket import PicowsSocket, frame_header
from telephony.twilio.protocol import OutboundEncoder
from telephony.twilio.socket import StreamSender
from tests.conftest import eventually
from tts_core.audio.telephony_format import FRAME_BYTES
from tts_core.render import FrameBatch

TICK_S = 0.02
OLD, NEW = b"\x01" * FRAME_BYTES, b"\x02" * FRAME_BYTES


class AtOnceWire:
    """A sender whose socket takes data at once while ``writable`` (as ``StreamSender`` over the
    lean listener); records each message, and whether it left from a task or from the ticker."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.from_task: list[bool] = []
        self.writable = True
        self.changed = asyncio.Event()
        self.pacer: Pacer | None = None
        self.buffered_at_send: list[float] = []

    def can_send_now(self) -> bool:
        return self.writable

    def send_now(self, texts: list[str]) -> None:
        for text in texts:
            self._record(text)

    async def __call__(self, text: str) -> None:
        self._record(text)

    def _record(self, text: str) -> None:
        self.sent.append(json.loads(text))
        self.from_task.append(asyncio.current_task() is not None)
        if self.pacer is not None:
            self.buffered_at_send.append(self.pacer.clock.buffered_s())
        self.changed.set()

    def outline(self) -> list[str]:
        return [m["mark"]["name"] if m["event"] == "mark" else m["event"] for m in self.sent]

    def payloads(self) -> list[str]:
        return [m["media"]["payload"] for m in self.sent if m["event"] == "media"]

    async def until(self, predicate: Any) -> None:
        while not predicate():
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 3)


def make_pacer(send: Any, lead_ms: float = 60.0) -> Pacer:
    pacer = Pacer(send_text=send, outbound=OutboundEncoder("MZ1"), clock=PlayoutClock(lead_ms=lead_ms),
                  marks=MarkWatch(60.0, on_overdue=lambda reason: None), hooks=SpeakerHooks(),
                  tick_s=TICK_S)
    if isinstance(send, AtOnceWire):
        send.pacer = pacer
    return pacer


def utterance(generation: int = 0) -> Utterance:
    queue = SpeechQueue(SpeakerHooks())
    queue.generation = generation
    return queue.create("Hi there.", interruptible=True, preemptible=False)


async def started(pacer: Pacer) -> asyncio.Task[None]:
    task = asyncio.create_task(pacer.run())
    await asyncio.sleep(0)  # run() has found the loop's ticker
    return task


async def stop(task: asyncio.Task[None], pacer: Pacer) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    pacer.marks.clear()


# ---- the ticker on its own ------------------------------------------------------------------------
async def test_the_ticker_has_a_timer_only_while_it_has_members() -> None:
    ticker = Ticker(asyncio.get_running_loop(), 0.005)
    ticks: list[str] = []
    ticked = asyncio.Event()

    def a() -> None:
        ticks.append("a")
        ticked.set()

    assert not ticker.armed
    ticker.join(a)
    ticker.join(a)  # joining twice is joining once
    assert ticker.armed and len(ticker) == 1
    await asyncio.wait_for(ticked.wait(), 2)
    assert ticks == ["a"]
    ticker.leave(a)
    assert not ticker.armed and len(ticker) == 0
    ticker.leave(a)  # leaving twice is harmless


async def test_a_failing_member_is_dropped_and_the_others_keep_ticking() -> None:
    ticker = Ticker(asyncio.get_running_loop(), 0.005)
    ticks: list[str] = []
    twice = asyncio.Event()

    def broken() -> None:
        raise RuntimeError("a bug in one call")

    def fine() -> None:
        ticks.append("fine")
        if len(ticks) == 2:
            twice.set()

    ticker.join(broken)
    ticker.join(fine)
    await asyncio.wait_for(twice.wait(), 2)
    assert broken not in ticker and fine in ticker
    ticker.leave(fine)
    assert not ticker.armed


async def test_a_member_that_leaves_and_joins_again_during_a_tick_arms_one_timer() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker(loop, 0.005)
    ticked = asyncio.Event()

    def rejoin() -> None:
        ticker.leave(rejoin)  # the last member leaves...
        ticker.join(rejoin)  # ...and comes back within the same tick
        ticked.set()

    ticker.join(rejoin)
    await asyncio.wait_for(ticked.wait(), 2)
    timers = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
    assert ticker.armed and len([h for h in timers if h._callback == ticker._tick]) == 1
    ticker.leave(rejoin)


# ---- pacers on the ticker -------------------------------------------------------------------------
async def test_calls_waiting_for_room_share_one_timer_and_send_from_it_without_a_task() -> None:
    wires = [AtOnceWire(), AtOnceWire()]
    pacers = [make_pacer(w) for w in wires]
    tasks = [await started(p) for p in pacers]
    utts = [utterance(), utterance()]
    for pacer, utt in zip(pacers, utts, strict=True):
        await pacer.take(utt, FrameBatch([OLD] * 12))
        await pacer.end_utterance(utt)
    ticker = ticker_for(TICK_S)
    assert len(ticker) == 2 and ticker.armed  # both wait for room on the one timer
    assert [w.outline() for w in wires] == [["media"] * 3] * 2  # the lead (60 ms) went out at once
    for wire in wires:
        await wire.until(lambda w=wire: len(w.sent) == 13)
        assert wire.outline() == ["media"] * 12 + ["g0-u1-end"]
        assert not any(wire.from_task[3:])  # the rest left from the ticker's callback
        assert max(wire.buffered_at_send) <= 0.060 + 1e-6  # never more than the lead ahead
    assert len(ticker) == 0 and not ticker.armed  # all sent: no timer left
    for task, pacer in zip(tasks, pacers, strict=True):
        await stop(task, pacer)


async def test_frames_leave_at_playback_pace() -> None:
    wire = AtOnceWire()
    pacer = make_pacer(wire)
    task = await started(pacer)
    utt = utterance()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await pacer.take(utt, FrameBatch([OLD] * 25))
    await pacer.end_utterance(utt)
    await wire.until(lambda: len(wire.sent) == 26)
    # 25 frames of 20 ms with a 60 ms lead: the last leaves ~440 ms after the first
    assert loop.time() - began >= 0.44 - 0.03
    assert utt.frames_sent == 25 and utt.underruns == 0
    await stop(task, pacer)


async def test_a_cancelled_call_leaves_the_ticker_and_no_timer() -> None:
    wire = AtOnceWire()
    pacer = make_pacer(wire)
    task = await started(pacer)
    await pacer.take(utterance(), FrameBatch([OLD] * 50))
    ticker = ticker_for(TICK_S)
    assert pacer.schedule.on_ticker and ticker.armed
    await stop(task, pacer)
    assert not pacer.schedule.on_ticker and not ticker.armed  # no timer left to send anything


async def test_a_stopped_pacer_sends_nothing_more_even_before_its_task_is_cancelled() -> None:
    wire = AtOnceWire()
    pacer = make_pacer(wire)
    task = await started(pacer)
    utt = utterance()
    await pacer.take(utt, FrameBatch([OLD] * 50))
    sent = len(wire.sent)
    pacer.stop()  # what Speaker.aclose does first: the task's cancellation lands later
    assert not pacer.schedule.on_ticker
    await pacer.take(utt, FrameBatch([OLD] * 2))  # would have been sent at once before
    pacer.schedule.kick()  # (as a tick would)
    assert len(wire.sent) == sent
    await stop(task, pacer)


async def test_a_cut_stops_the_frames_at_once_and_the_next_generation_plays() -> None:
    wire = AtOnceWire()
    pacer = make_pacer(wire)
    task = await started(pacer)
    old = utterance(generation=0)
    await pacer.take(old, FrameBatch([OLD] * 50))
    await pacer.end_utterance(old)
    await wire.until(lambda: len(wire.sent) >= 6)  # playing, from the ticker
    pacer.cut(1)
    cut_at = len(wire.sent)
    new = utterance(generation=1)
    await pacer.take(new, FrameBatch([NEW] * 5))
    await pacer.end_utterance(new)
    await wire.until(lambda: "g1-u1-end" in wire.outline())
    after = wire.sent[cut_at:]
    old_payload = wire.payloads()[0]
    assert [m["event"] for m in after] == ["media"] * 5 + ["mark"]
    assert all(m["media"]["payload"] != old_payload for m in after if m["event"] == "media")
    assert "g0-u1-end" not in wire.outline()
    await stop(task, pacer)


async def test_a_full_socket_makes_the_pacer_wait_so_the_stall_watchdog_still_fires() -> None:
    stalled = asyncio.Event()
    release = asyncio.Event()
    waited: list[str] = []

    class FullSocket:
        """Its peer stopped reading: nothing may be sent without waiting."""

        def writable_now(self) -> bool:
            return False

        def send_texts_now(self, texts: list[str]) -> None:
            raise AssertionError("sent without waiting on a full socket")

        async def send_text(self, text: str) -> None:
            waited.append(text)
            await release.wait()

    sock = FullSocket()
    sender = StreamSender(sock.send_text, lambda: True, stall_s=0.05, on_stall=stalled.set, at_once=sock)
    pacer = make_pacer(sender)
    task = await started(pacer)
    await pacer.take(utterance(), FrameBatch([OLD] * 10))
    await asyncio.wait_for(stalled.wait(), 2)
    assert sender.stalled and len(waited) == 1
    await stop(task, pacer)


async def test_a_send_in_flight_is_never_overtaken_by_a_send_without_waiting() -> None:
    """A ``clear`` waiting on the socket: the pacer's next frames wait behind it, in order."""
    order: list[str] = []
    gate = asyncio.Event()

    class Socket:
        def writable_now(self) -> bool:
            return True

        def send_texts_now(self, texts: list[str]) -> None:
            order.extend(json.loads(t)["event"] for t in texts)

        async def send_text(self, text: str) -> None:
            await gate.wait()
            order.append(json.loads(text)["event"])

    sock = Socket()
    sender = StreamSender(sock.send_text, lambda: True, stall_s=5.0, on_stall=lambda: None, at_once=sock)
    pacer = make_pacer(sender)
    task = await started(pacer)
    clear = asyncio.create_task(sender(OutboundEncoder("MZ1").clear()))
    await asyncio.sleep(0)  # the clear holds the sender, waiting on the socket
    assert not sender.can_send_now()
    await pacer.take(utterance(), FrameBatch([NEW] * 2))
    gate.set()
    await clear
    await eventually(lambda: len(order) == 3, 2, "the frames after the clear")
    assert order == ["clear", "media", "media"]
    await stop(task, pacer)


async def test_the_lean_socket_takes_a_ticks_messages_in_one_write() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

    async def never(ws: Any) -> None:
        return None

    sock = PicowsSocket(SimpleNamespace(), SimpleNamespace(headers={}), set(), handler=never)
    transport = Recorder()
    sock._transport = SimpleNamespace(underlying_transport=transport)  # type: ignore[assignment]
    out = OutboundEncoder("MZ1")
    texts = [out.media(NEW), out.media(NEW), out.mark(Mark.utterance_end(0, 1).wire)]
    framed = b"".join(frame_header(len(t)) + t.encode() for t in texts)
    assert sock.writable_now()
    sock.send_texts_now(texts)
    assert transport.writes == [framed]  # nothing was corked: one write, at once
    await sock.send_text(out.clear())  # corked until the loop's next pass...
    sock.send_texts_now(texts)  # ...so these queue behind it, in order
    assert len(transport.writes) == 1
    await asyncio.sleep(0)
    clear = out.clear().encode()
    assert transport.writes == [framed, frame_header(len(clear)) + clear + framed]
    sock.pause_writing()  # Twilio stopped reading: the pacer must take the waiting path
    assert not sock.writable_now()
    sock.resume_writing()
    assert sock.writable_now()


async def test_a_renderer_waiting_for_room_is_woken_once_its_batch_fits() -> None:
    wire = AtOnceWire()
    pacer = Pacer(send_text=wire, outbound=OutboundEncoder("MZ1"), clock=PlayoutClock(lead_ms=20.0),
                  marks=MarkWatch(60.0, on_overdue=lambda reason: None), hooks=SpeakerHooks(),
                  max_queued_frames=10, tick_s=TICK_S)
    seen: list[tuple[int, bool]] = []
    pacer.hooks.on_frames_sent = lambda n: seen.append((pacer.queued_frames, pacer._room.is_set()))
    task = await started(pacer)
    utt = utterance()
    await pacer.take(utt, FrameBatch([OLD] * 9))  # one frame goes at once (a 20 ms lead)
    await asyncio.wait_for(pacer.take(utt, FrameBatch([NEW] * 6)), 2)  # fits once 4 are queued
    # sent while it waited (8 queued when it began): not woken at 7, 6, 5; woken once at 4
    assert seen[1:] == [(7, False), (6, False), (5, False), (4, True)]
    await stop(task, pacer)


async def test_only_the_lean_socket_is_sent_to_without_waiting() -> None:
    """``run_call`` gives ``StreamSender`` the socket as ``at_once`` only where it ``TakesAtOnce``:
    picows' adapter does; starlette's ``WebSocket`` (the ASGI route) keeps the awaited path."""
    from starlette.websockets import WebSocket

    from telephony.twilio.socket import TakesAtOnce

    async def never(ws: Any) -> None:
        return None

    sock = PicowsSocket(SimpleNamespace(), SimpleNamespace(headers={}), set(), handler=never)
    assert isinstance(sock, TakesAtOnce)
    assert not issubclass(WebSocket, TakesAtOnce)
