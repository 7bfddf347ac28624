"""A fake ``CallControl`` for agent unit tests: no engine, no socket, but the speaker's contract.

What it keeps of the real ``Speaker``: utterances play one at a time in submission order; a
streamed ``say`` consumes its token iterator as the tokens come (and closes it when done or cut);
a new ``say`` cuts queued and playing speech that is all ``preemptible``; ``interrupt`` is the
caller barging in. "Heard" here is what was consumed (or what the test says was heard), where the
real speaker measures it from marks and the playout clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from telephony.agents.base import CallInfo, EndResult, SpeechOutcome, SpeechResult


@dataclass(eq=False)
class FakeSpeech:
    source: str | AsyncIterator[str]
    preemptible: bool
    interruptible: bool
    future: asyncio.Future[SpeechResult]
    tokens: list[str] = field(default_factory=list)
    first_token: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens).strip()

    def resolve(self, outcome: SpeechOutcome, heard: str | None = None) -> None:
        if not self.future.done():
            self.future.set_result(SpeechResult(self.text, outcome, self.text if heard is None else heard))


class FakeCall:
    def __init__(self, *, greeting: str = "", call_sid: str = "CAfake") -> None:
        params = {"greeting": greeting} if greeting else {}
        self.info = CallInfo(call_sid=call_sid, stream_sid="MZfake", custom_parameters=params)
        self.speeches: list[FakeSpeech] = []
        self.ended: str | None = None
        self.hangup = False
        self._pending: deque[FakeSpeech] = deque()
        self._current: FakeSpeech | None = None
        self._work = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    # ---- CallControl -----------------------------------------------------------------------------
    async def say(self, text: str | AsyncIterator[str], *, interruptible: bool = True,
                  preemptible: bool = False) -> SpeechResult:
        speech = FakeSpeech(text, preemptible, interruptible, asyncio.get_running_loop().create_future())
        if isinstance(text, str):
            speech.tokens.append(text)
        live = [s for s in [self._current, *self._pending] if s is not None and not s.future.done()]
        if live and all(s.preemptible for s in live):
            self._cut(live, heard=None)
        self.speeches.append(speech)
        self._changed.set()
        speech.future.add_done_callback(lambda _: self._changed.set())
        self._pending.append(speech)
        self._work.set()
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return await asyncio.shield(speech.future)

    async def play_audio(self, audio: np.ndarray, sample_rate: int, *, label: str = "audio",
                         interruptible: bool = True, preemptible: bool = False,
                         loops: int = 1) -> SpeechResult:
        return SpeechResult(label, SpeechOutcome.PLAYED)

    async def end(self, reason: str = "agent ended", *, hangup: bool = False) -> EndResult:
        self.ended = reason
        self.hangup = hangup
        return EndResult(hung_up=hangup)

    # ---- what tests do -------------------------------------------------------------------------
    def interrupt(self, heard: str | None = None) -> SpeechResult | None:
        """The caller barges in: interruptible speech stops; returns what the current one became."""
        current = self._current
        live = [s for s in [current, *self._pending] if s is not None and not s.future.done()
                and s.interruptible]
        if not live:
            return None
        self._cut(live, heard=heard)
        return current.future.result() if current is not None and current.future.done() else None

    def spoken(self) -> list[str]:
        """Texts of the speeches that played to the end."""
        return [s.text for s in self.speeches
                if s.future.done() and s.future.result().outcome is SpeechOutcome.PLAYED]

    async def wait_speeches(self, count: int, timeout: float = 5.0) -> list[FakeSpeech]:
        """Wait until ``count`` speeches were submitted and have all resolved."""
        async with asyncio.timeout(timeout):
            while len(self.speeches) < count or not all(s.future.done() for s in self.speeches[:count]):
                self._changed.clear()
                await self._changed.wait()
        return self.speeches[:count]

    async def wait_tokens(self, count: int, speech: int = 0, timeout: float = 5.0) -> FakeSpeech:
        """Wait until speech number ``speech`` has taken ``count`` tokens."""
        async with asyncio.timeout(timeout):
            while len(self.speeches) <= speech or len(self.speeches[speech].tokens) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.speeches[speech]

    async def aclose(self) -> None:
        for speech in [self._current, *self._pending]:
            if speech is not None:
                self._cut([speech], heard=None, outcome=SpeechOutcome.CANCELLED)
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    # ---- playback --------------------------------------------------------------------------------
    def _cut(self, speeches: list[FakeSpeech], heard: str | None,
             outcome: SpeechOutcome = SpeechOutcome.INTERRUPTED) -> None:
        for speech in speeches:
            # The one playing was heard up to ``heard`` (default: all it consumed); queued ones not at all.
            speech.resolve(outcome, heard=heard if speech is self._current else "")
            if speech.task is not None:
                speech.task.cancel()
        for speech in speeches:
            with contextlib.suppress(ValueError):
                self._pending.remove(speech)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._work.clear()
                await self._work.wait()
                continue
            speech = self._pending.popleft()
            self._current = speech
            speech.task = asyncio.create_task(self._play(speech))
            await asyncio.wait({speech.task})
            speech.resolve(SpeechOutcome.PLAYED)
            self._current = None

    async def _play(self, speech: FakeSpeech) -> None:
        source = speech.source
        if isinstance(source, str):
            speech.first_token.set()
            await asyncio.sleep(0)
            return
        try:
            async for token in source:
                speech.tokens.append(token)
                speech.first_token.set()
                self._changed.set()
        finally:
            with contextlib.suppress(Exception):
                await source.aclose()  # type: ignore[attr-defined]
