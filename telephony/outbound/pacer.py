"""Rendered audio to the socket at playback pace, with a mark after every segment and utterance.

The pacer holds a queue of frame batches bounded in frames (so the renderer, which waits for room,
never runs more than a few seconds ahead of what the caller hears) and drains it against a
``PlayoutClock``, keeping Twilio's buffer a bounded lead ahead of playback. After a segment's or an
utterance's audio it sends that point's ``Mark`` and asks the ``MarkWatch`` to expect its echo.

Everything it sends is of the current ``generation``: a cut bumps it, and audio of an older one
still queued, or being sent, stops at the next frame (nothing may follow the ``clear``).

What is due is decided here, once, for both ways of sending it; *when* and *how* it is sent is the
``SendSchedule``'s (telephony/outbound/send_schedule.py): synchronously from the process's shared
ticker while the socket takes data at once (the lean listener), else awaited in the call's task.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from telephony.outbound.hooks import SpeakerHooks
from telephony.outbound.mark_watch import MarkWatch
from telephony.outbound.marks import Mark
from telephony.outbound.send_schedule import SendsAtOnce, SendSchedule
from telephony.outbound.utterance import Utterance
from telephony.playout import PlayoutClock
from telephony.twilio.protocol import OutboundEncoder
from tts_core.audio.telephony_format import FRAME_S
from tts_core.render import FrameBatch, RenderItem, SegmentEnd, SegmentStart


class QueuedAudio(NamedTuple):
    """Frames of one utterance waiting to be sent, and the mark to send after them, if any."""

    utterance: Utterance
    frames: list[bytes]
    mark: Mark | None


class Pacer:
    """One call's outbound audio queue and the loop that sends it in real time."""

    def __init__(self, *, send_text: Callable[[str], Awaitable[None]], outbound: OutboundEncoder,
                 clock: PlayoutClock, marks: MarkWatch, hooks: SpeakerHooks,
                 max_queued_frames: int = 150, tick_s: float = 0.060) -> None:
        self._send_text = send_text
        self._out = outbound
        self.clock = clock
        self.marks = marks
        self.hooks = hooks
        self._max_queued_frames = max_queued_frames
        self.generation = 0
        """The generation whose audio may be sent (the queue's, as of the last cut)."""
        self.queued_frames = 0
        self._queue: deque[QueuedAudio] = deque()
        self._offset = 0
        """Frames of the queue's head already sent."""
        self._room = asyncio.Event()
        self._room_for = 0
        """Frames the renderer waits to queue: ``_room`` is set once they fit."""
        self.schedule = SendSchedule(self, send_text, tick_s)

    # ---- from the renderer --------------------------------------------------------------------
    async def take(self, utt: Utterance, item: RenderItem) -> None:
        """One render item of ``utt``: frames are queued, a segment end queues its mark."""
        if isinstance(item, FrameBatch):
            if item.frames:
                await self._put(utt, item.frames, None)
        elif isinstance(item, SegmentStart):
            utt.segment_started(item.text)
        elif isinstance(item, SegmentEnd):
            utt.segment_ended(item.index)
            await self._put(utt, [], Mark.segment_end(utt.generation, utt.id, item.index))

    async def end_utterance(self, utt: Utterance) -> None:
        """All of ``utt`` is queued: its end mark follows."""
        await self._put(utt, [], Mark.utterance_end(utt.generation, utt.id))

    def end_utterance_now(self, utt: Utterance) -> None:
        """As ``end_utterance``, without waiting for room (a failed rendering: what was queued
        still plays, and its end mark must follow)."""
        self._enqueue(utt, [], Mark.utterance_end(utt.generation, utt.id))

    async def _put(self, utt: Utterance, frames: list[bytes], mark: Mark | None) -> None:
        """Queue frames (and a mark), waiting while the queue holds ``max_queued_frames``.

        The wait is woken once ``frames`` fit, not at every frame sent (a cached segment is one
        batch of seconds of audio: waking at each 60 ms tick was a task switch per call and tick)."""
        while self.queued_frames and self.queued_frames + len(frames) > self._max_queued_frames:
            self._room_for = len(frames)
            self._room.clear()
            await self._room.wait()
        if utt.generation != self.generation:
            raise asyncio.CancelledError  # cut while we waited
        self._enqueue(utt, frames, mark)

    def _enqueue(self, utt: Utterance, frames: list[bytes], mark: Mark | None) -> None:
        utt.frames_queued += len(frames)
        self._queue.append(QueuedAudio(utt, frames, mark))
        self.queued_frames += len(frames)
        self.schedule.kick()

    # ---- cuts ---------------------------------------------------------------------------------
    def cut(self, generation: int) -> None:
        """Forget all unsent audio; from now on only ``generation``'s audio is sent. Twilio's
        buffer is being cleared, so the clock starts empty and no mark sent so far is overdue."""
        self.generation = generation
        self.drop_queued()
        self.clock.clear()
        self.marks.clear()

    def drop_queued(self) -> None:
        self._queue.clear()
        self._offset = 0
        self.queued_frames = 0
        self._room.set()
        self.schedule.settle()

    def deadline(self) -> float:
        """When the audio rendered next is needed: what is queued or buffered at Twilio plays first."""
        return time.monotonic() + self.clock.buffered_s() + self.queued_frames * FRAME_S

    def played_frames(self, active: list[Utterance]) -> dict[int, int]:
        """Frames each active utterance has had played, by the playout model and marks."""
        unplayed = round(self.clock.buffered_s() / FRAME_S)
        budget = max(0, sum(u.frames_sent for u in active) - unplayed)
        result: dict[int, int] = {}
        for utt in active:
            played = min(utt.frames_sent, budget)
            budget -= played
            result[utt.id] = max(played, utt.frames_confirmed)
        return result

    # ---- to the socket (when: ``SendSchedule``) -------------------------------------------------
    async def run(self) -> None:
        """The sender task (see ``SendSchedule.run``)."""
        await self.schedule.run()

    def stop(self) -> None:
        """Send nothing more (the call is closing)."""
        self.schedule.stop()

    def queued(self) -> bool:
        return bool(self._queue)

    def has_due(self) -> bool:
        """Something may be sent now: a mark whose frames are all sent, or frames with room."""
        queue = self._queue
        return bool(queue) and (self._offset >= len(queue[0].frames) or self.clock.room_frames() > 0)

    def _next(self) -> tuple[Utterance, list[bytes], Mark | None] | None:
        """The head of the queue's frames that fit the lead now (accounted on the clock), and its
        mark once they are its last; None when nothing may go (the queue is empty, or Twilio's
        buffer holds the lead: the schedule then waits for a tick)."""
        queue = self._queue
        if not queue:
            return None
        utt, frames, mark = queue[0]
        offset = self._offset
        if offset < len(frames):
            room = self.clock.room_frames()
            if room == 0:
                return None
            batch = frames[offset : offset + room]
            _account(utt, self.clock.on_sent(len(batch), continuing=utt.frames_sent > 0), self.hooks)
            offset += len(batch)
            if offset < len(frames):
                self._offset = offset
                return utt, batch, None
        else:
            batch = []
        queue.popleft()
        self._offset = 0
        return utt, batch, mark

    def _sent(self, utt: Utterance, batch: list[bytes]) -> None:
        utt.frames_sent += len(batch)
        self.queued_frames -= len(batch)
        if self.queued_frames + self._room_for <= self._max_queued_frames or not self.queued_frames:
            self._room.set()
        hooks = self.hooks
        if hooks.on_frames_sent:
            hooks.on_frames_sent(len(batch))
        if hooks.on_audio_sent:
            hooks.on_audio_sent(batch)

    def send_due_now(self, at_once: SendsAtOnce) -> None:
        """Everything due now, in one send without waiting: nothing can come between (no cut, no
        ``clear``), so the bookkeeping is done as the messages are built."""
        media = self._out.media
        texts: list[str] = []
        while (step := self._next()) is not None:
            utt, batch, mark = step
            if batch:
                texts.extend(map(media, batch))
                self._sent(utt, batch)
            if mark is not None:
                self.marks.expect(mark, self.clock.buffered_s())
                texts.append(self._out.mark(mark.wire))
                if mark.is_end:
                    utt.end_mark_sent_at = time.monotonic()
        if texts:
            at_once.send_now(texts)

    async def send_due(self) -> None:
        """Everything due now, awaiting each send: a cut while one waits stops the rest."""
        while (step := self._next()) is not None:
            utt, batch, mark = step
            for frame in batch:
                if utt.generation != self.generation:
                    return  # cut while a send waited: nothing more of it may follow the clear
                await self._send_text(self._out.media(frame))
            if utt.generation != self.generation:
                return  # the cut already forgot the rest and reset the queue count
            if batch:
                self._sent(utt, batch)
            if mark is not None:
                await self._send_mark(utt, mark)

    async def _send_mark(self, utt: Utterance, mark: Mark) -> None:
        # Expected before it is sent: an echo that overtakes the send's return is still ours. A cut
        # during the send clears the watch: that echo then proves nothing, as it should.
        self.marks.expect(mark, self.clock.buffered_s())
        await self._send_text(self._out.mark(mark.wire))
        if mark.is_end and utt.generation == self.generation:
            utt.end_mark_sent_at = time.monotonic()


def _account(utt: Utterance, gap: float, hooks: SpeakerHooks) -> None:
    """Underrun and first-frame bookkeeping for a batch about to be sent."""
    if gap > 0:
        utt.underruns += 1
        utt.underrun_ms += gap * 1000
        if hooks.on_underrun:
            hooks.on_underrun(gap)
    if utt.first_frame_at is None:
        utt.first_frame_at = time.monotonic()
        if hooks.on_first_frame:
            hooks.on_first_frame(utt, utt.first_frame_at - utt.created_at)
