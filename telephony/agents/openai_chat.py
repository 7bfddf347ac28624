"""The built-in LLM agent (``VOICE_BRIDGE_DEFAULT_AGENT=openai-chat``): each caller turn goes to an
OpenAI-compatible chat server and the reply is spoken token by token as it streams.

One reply at a time per call. A turn's HTTP request starts the moment the caller's final words
arrive (not when the speaker gets round to it), and its tokens flow through a small bounded
channel into ``call.say``, whose segmenter cuts speakable phrases from them. Replies are spoken
*preemptible*: when a new caller turn arrives while a reply is still streaming or playing, the old
request is cancelled (its connection closed, so the server stops generating), the new reply's
``say`` cuts the old audio, and the new request carries what the caller heard of the old reply.

The conversation (system prompt, then caller and agent turns, bounded) keeps only what the caller
actually heard: each reply's entry is filled from its ``SpeechResult.heard_text`` (the whole text
when played, the heard part when the caller interrupted it). The bridge speaks the call's greeting
itself; the agent records it from ``custom_parameters['greeting']`` and cuts it to the heard part on
an interruption that comes before any reply.

A failing chat server never leaves the caller in silence: every error or timeout, and a reply
with nothing to speak, is logged (never with the API key) and answered with a short spoken
apology; the call goes on and the next turn tries again. A reasoning model's leading
``<think>…</think>`` block is not spoken. Keypresses are passed to the model as a caller turn,
e.g. "(the caller pressed 5)".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from telephony.agents.base import Agent, CallControl, SpeechOutcome, SpeechResult
from telephony.agents.chat_stream import ChatError, ChatServer, stream_chat, without_reasoning

log = logging.getLogger("voice_bridge.llm")

APOLOGY = "Sorry, I'm having trouble right now. Please try again in a moment."
MAX_REPLY_CHARS = 4000
"""A reply longer than this is cut (the model is rambling; nobody listens that long on a phone)."""
CHANNEL_TOKENS = 1024
"""Tokens buffered between the HTTP stream and the speaker; past it the stream waits (TCP
back-pressure reaches the server)."""
SETTLE_WAIT_S = 0.5
"""How long a new turn waits to learn what the caller heard of the reply it superseded."""


@dataclass
class Message:
    role: str
    content: str


@dataclass(eq=False)
class _Turn:
    """One caller turn and the reply to it."""

    reply: Message
    """The reply's entry in the history: empty until its speech resolves, then what was heard."""
    started_at: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    speech: asyncio.Task[SpeechResult] | None = None
    error: ChatError | None = None
    first_token_ms: float | None = None
    chars: int = 0


class _TokenChannel:
    """Tokens from the HTTP pump to the speaker. ``close`` ends the reader at once (the speaker
    then finishes what it has); a reader that stops early closes it, so the pump stops too."""

    def __init__(self, limit: int) -> None:
        self._items: deque[str] = deque()
        self._limit = limit
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    async def put(self, token: str) -> bool:
        """False once the channel is closed (nobody will speak the token)."""
        while len(self._items) >= self._limit and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return False
        self._items.append(token)
        self._readable.set()
        return True

    def close(self, *, discard: bool = False) -> None:
        """No more tokens; with ``discard``, not even those already buffered (a superseded reply)."""
        self._closed = True
        if discard:
            self._items.clear()
        self._readable.set()
        self._writable.set()

    async def tokens(self) -> AsyncIterator[str]:
        try:
            while True:
                if self._items:
                    token = self._items.popleft()
                    self._writable.set()
                    yield token
                    continue
                if self._closed:
                    return
                self._readable.clear()
                await self._readable.wait()
        finally:
            self.close()


class OpenAIChatAgent(Agent):
    def __init__(
        self,
        server: ChatServer,
        *,
        http: httpx.AsyncClient,
        system_prompt: str,
        max_history: int = 24,
        on_error: Callable[[str], None] | None = None,
        apology: str = APOLOGY,
    ) -> None:
        self.server = server
        self.http = http
        self.system_prompt = system_prompt
        self.max_history = max_history
        self.apology = apology
        self._on_error = on_error
        self.history: list[Message] = []
        """Caller ("user") and agent ("assistant") turns, oldest first; the system prompt is not
        kept here but put first in every request."""
        self._greeting: Message | None = None
        self._current: _Turn | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._call_sid = "-"
        self._stopped = False

    # ---- hooks -------------------------------------------------------------------------------
    async def on_start(self, call: CallControl) -> None:
        self._call_sid = call.info.call_sid
        greeting = call.info.custom_parameters.get("greeting", "").strip()
        if greeting and not self.history:
            self._greeting = Message("assistant", greeting)
            self.history.append(self._greeting)

    async def on_caller_speech(self, call: CallControl, text: str, final: bool) -> None:
        text = text.strip()
        if final and text:
            self._start_turn(call, text)

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        self._start_turn(call, f"(the caller pressed {digit})")

    async def on_interrupt(self, call: CallControl, heard_text: str, played_ms: int) -> None:
        # A reply's own SpeechResult says what was heard of it; before any reply, the only thing
        # the caller can have interrupted is the greeting the bridge spoke.
        if self._current is None and self._greeting is not None:
            self._greeting.content = heard_text.strip()

    async def on_stop(self, call: CallControl) -> None:
        self._stopped = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- turns -------------------------------------------------------------------------------
    def _start_turn(self, call: CallControl, text: str) -> None:
        """Synchronous, so that hooks stay in event order and the history in turn order."""
        if self._stopped:
            return
        previous = self._current
        if previous is not None and previous.task is not None:
            previous.task.cancel()  # closes its request; its audio is cut by our say() below
        self.history.append(Message("user", text))
        turn = _Turn(Message("assistant", ""))
        self.history.append(turn.reply)
        del self.history[: max(0, len(self.history) - self.max_history)]
        self._current = turn
        turn.task = self._own(self._answer(call, turn, previous), "llm-turn")

    async def _answer(self, call: CallControl, turn: _Turn, previous: _Turn | None) -> None:
        channel = _TokenChannel(CHANNEL_TOKENS)
        # Submitted before the request: it cuts the previous reply's audio (preemptible) and holds
        # this reply's place in the call's speech queue while the model thinks.
        turn.speech = self._own(call.say(channel.tokens(), preemptible=True), "llm-say")
        turn.speech.add_done_callback(lambda task: self._settle(turn, task))
        pump: asyncio.Task[None] | None = None
        try:
            if previous is not None and previous.speech is not None:
                await asyncio.wait({previous.speech}, timeout=SETTLE_WAIT_S)
            pump = asyncio.create_task(self._pump(turn, self.request_messages(), channel),
                                       name=f"llm-stream:{self._call_sid}")
            await asyncio.wait({turn.speech})  # not cancelled with us: it only waits on the speaker
        finally:
            # Cancelled (a newer turn, or the call ended): nothing more of this reply is spoken,
            # and its request is closed so the server stops generating.
            channel.close(discard=True)
            if pump is not None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
        result = _result(turn.speech)
        self._log_turn(turn, result)
        if turn.error is not None and result is not None and result.outcome is SpeechOutcome.PLAYED:
            apology = self._own(call.say(self.apology, preemptible=True), "llm-apology")
            await asyncio.wait({apology})

    async def _pump(self, turn: _Turn, messages: list[dict[str, str]], channel: _TokenChannel) -> None:
        """Stream the reply into the channel; errors are recorded for the apology, not raised."""
        try:
            async with (contextlib.aclosing(stream_chat(self.http, self.server, messages)) as raw,
                        contextlib.aclosing(without_reasoning(raw)) as tokens):
                async for token in tokens:
                    if turn.first_token_ms is None:
                        turn.first_token_ms = (time.monotonic() - turn.started_at) * 1000
                    if turn.chars + len(token) > MAX_REPLY_CHARS:
                        log.warning("call %s: LLM reply cut at %d characters", self._call_sid,
                                    MAX_REPLY_CHARS)
                        break
                    turn.chars += len(token)
                    if not await channel.put(token):
                        break  # the speaker stopped listening (interrupted): stop the server too
            if not turn.chars:
                raise ChatError("empty", "the reply had no text to speak")
        except ChatError as exc:
            turn.error = exc
            log.warning("call %s: LLM %s (%s): %s", self._call_sid, exc.failure,
                        self.server.display_url, exc)
            if self._on_error is not None:
                self._on_error(f"llm_{exc.failure}")
        except Exception as exc:  # a bug here must still end in an apology, not silence
            turn.error = ChatError("internal", repr(exc))
            log.exception("call %s: LLM stream failed", self._call_sid)
            if self._on_error is not None:
                self._on_error("llm_internal")
        finally:
            channel.close()

    def _settle(self, turn: _Turn, speech: asyncio.Task[SpeechResult]) -> None:
        """The history keeps what the caller heard of the reply (all of it, if it played)."""
        result = _result(speech)
        if result is not None:
            turn.reply.content = result.heard_text.strip()

    def request_messages(self) -> list[dict[str, str]]:
        """System prompt, then the history as strictly alternating caller/agent turns.

        Strict chat templates (Gemma's, older Mistral ones) reject a conversation whose roles do
        not alternate or that opens with the assistant, and vLLM answers such a request with a
        400; so adjacent caller turns are merged (a reply interrupted before a word was heard
        leaves none between them), replies nobody heard are left out, and an opening agent turn
        (the greeting) goes into the system message instead."""
        heard = [m for m in self.history if m.content]
        system = self.system_prompt
        while heard and heard[0].role == "assistant":  # the greeting, or the rest of a trimmed turn
            opening = heard.pop(0)
            if opening is self._greeting:
                system += f'\n\nThe call began with you saying: "{opening.content}"'
        turns: list[Message] = []
        for message in heard:
            if turns and turns[-1].role == message.role:
                turns[-1] = Message(message.role, f"{turns[-1].content}\n{message.content}")
            else:
                turns.append(Message(message.role, message.content))
        return [{"role": "system", "content": system},
                *({"role": m.role, "content": m.content} for m in turns)]

    # ---- housekeeping ------------------------------------------------------------------------
    def _own(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{name}:{self._call_sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _log_turn(self, turn: _Turn, result: SpeechResult | None) -> None:
        log.debug("call %s: LLM turn: first token %s ms, %d chars, %s%s", self._call_sid,
                  None if turn.first_token_ms is None else round(turn.first_token_ms),
                  turn.chars, result.outcome.value if result else "cancelled",
                  f", error {turn.error.failure}" if turn.error else "")


def _result(task: asyncio.Task[SpeechResult] | None) -> SpeechResult | None:
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


__all__ = ["APOLOGY", "Message", "OpenAIChatAgent"]
