"""Rendered audio to the socket at playback pace, with a mark after every segment and utterance.

The pacer holds a queue of frame batches bounded in frames (so the renderer, which waits for room,
never runs more than a few seconds ahead of what the caller hears) and drains it against a
``PlayoutClock``, keeping Twilio's buffer a bounded lead ahead of playback. After a segment's or an
utterance's audio it sends that point's ``Mark`` and asks the ``MarkWatch`` to expect its echo.

Everything it sends is of the current ``generation``: a cut bumps it, and audio of an older one
still queued, or being sent, stops at the next frame (nothing may follow the ``clear``).
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
        self._tick_s = tick_s
        self.generation = 0
        """The generation whose audio may be sent (the queue's, as of the last cut)."""
        self.queued_frames = 0
        self._queue: deque[QueuedAudio] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()

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
        """Queue frames (and a mark), waiting while the queue holds ``max_queued_frames``."""
        while self.queued_frames and self.queued_frames + len(frames) > self._max_queued_frames:
            self._room.clear()
            await self._room.wait()
        if utt.generation != self.generation:
            raise asyncio.CancelledError  # cut while we waited
        self._enqueue(utt, frames, mark)

    def _enqueue(self, utt: Utterance, frames: list[bytes], mark: Mark | None) -> None:
        utt.frames_queued += len(frames)
        self._queue.append(QueuedAudio(utt, frames, mark))
        self.queued_frames += len(frames)
        self._ready.set()

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
        self.queued_frames = 0
        self._room.set()

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

    # ---- to the socket ------------------------------------------------------------------------
    async def run(self) -> None:
        """The sender: forever, the oldest queued audio at playback pace, then its mark."""
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            utt, frames, mark = self._queue.popleft()
            await self._send_frames(utt, frames)
            if mark is not None and utt.generation == self.generation:
                await self._send_mark(utt, mark)

    async def _send_frames(self, utt: Utterance, frames: list[bytes]) -> None:
        sent = 0
        while sent < len(frames) and utt.generation == self.generation:
            room = self.clock.room_frames()
            if room == 0:
                await asyncio.sleep(self.clock.wait_s(self._tick_s))
                continue
            batch = frames[sent : sent + room]
            self._account(utt, self.clock.on_sent(len(batch), continuing=utt.frames_sent > 0))
            for frame in batch:
                if utt.generation != self.generation:
                    break  # cut while a send waited: nothing more of it may follow the clear
                await self._send_text(self._out.media(frame))
            if utt.generation != self.generation:
                return  # the cut already forgot the rest and reset the queue count
            sent += len(batch)
            utt.frames_sent += len(batch)
            self.queued_frames -= len(batch)
            self._room.set()
            if self.hooks.on_frames_sent:
                self.hooks.on_frames_sent(len(batch))
            if self.hooks.on_audio_sent:
                self.hooks.on_audio_sent(batch)

    def _account(self, utt: Utterance, gap: float) -> None:
        """Underrun and first-frame bookkeeping for a batch about to be sent."""
        if gap > 0:
            utt.underruns += 1
            utt.underrun_ms += gap * 1000
            if self.hooks.on_underrun:
                self.hooks.on_underrun(gap)
        if utt.first_frame_at is None:
            utt.first_frame_at = time.monotonic()
            if self.hooks.on_first_frame:
                self.hooks.on_first_frame(utt, utt.first_frame_at - utt.created_at)

    async def _send_mark(self, utt: Utterance, mark: Mark) -> None:
        # Expected before it is sent: an echo that overtakes the send's return is still ours. A cut
        # during the send clears the watch: that echo then proves nothing, as it should.
        self.marks.expect(mark, self.clock.buffered_s())
        await self._send_text(self._out.mark(mark.wire))
        if mark.is_end and utt.generation == self.generation:
            utt.end_mark_sent_at = time.monotonic()
