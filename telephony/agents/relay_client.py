"""A remote agent application spoken to over the ConversationRelay protocol.

voice-bridge plays the role Twilio's ConversationRelay plays toward an agent application: one
WebSocket per call to the agent's URL, ``setup`` first, then ``prompt``/``dtmf``/``interrupt``/``error``
out and ``text``/``play``/``sendDigits``/``language``/``end`` in. An application written for Twilio
(or Telnyx) ConversationRelay can therefore speak with our voice unchanged.

Tasks, all owned by the agent and cancelled by ``on_stop``:
- one *reader* that handles the agent's messages strictly in order and never waits on speech
  (except for ``end``, which by definition waits for what is queued);
- one *speech job* per ``say``/``play``, awaiting its ``SpeechResult`` so that failures are reported
  back to the agent as ``error`` messages. Jobs hand their speech to the call in message order even
  when a ``play`` has to download its audio first: each job waits until the one before it has
  submitted its speech.

A streamed reply (``text`` tokens with ``last: false``) becomes one ``call.say`` over an async
iterator fed from a queue; ``last: true`` closes it. A whole sentence in one ``last: true`` message
is said as a plain string, so the call side's phrase cache can serve it. When the call side cuts a
streamed turn (barge-in, failure), tokens still arriving for it are discarded until the agent ends
the turn or a new caller event (``prompt``/``dtmf``) starts a new exchange: they belong to a reply the
caller already talked over, and the agent gets one ``error`` quoting what was not spoken.

Nothing an agent sends is lost silently: it is spoken, or reported (``interrupt`` for what the
caller talked over, ``error`` for failures, refusals and discarded tokens). If the agent disconnects,
what it already sent is still spoken before the call's stream closes. Per call, waiting speech
requests, concurrent ``play`` downloads and the length of one streamed reply are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from telephony.agents.audio_fetch import AudioFetchError, decode_wav, decoded_bytes, download_audio
from telephony.agents.base import Agent, AgentError, CallControl, SpeechOutcome, SpeechResult
from telephony.agents.play_budget import PlayBudget, megabytes
from telephony.egress import EgressPolicy, EgressRefused
from telephony.relay_protocol import (
    Dtmf,
    End,
    Error,
    Interrupt,
    Language,
    Play,
    Prompt,
    RelayProtocolError,
    SendDigits,
    Setup,
    Text,
    parse_agent_message,
)
from telephony.stream_auth import sign

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0
"""on_stop never waits longer than this for the agent's socket to close."""
HARD_SIZE_FACTOR = 4
"""Messages up to ``max_message_bytes`` are accepted; larger ones up to this multiple are answered
with an ``error`` (the session goes on); beyond it the WebSocket library closes the connection."""
SEND_TIMEOUT_S = 5.0
"""A send waiting this long on an agent that does not read is dropped (hooks must not hang)."""
END_GRACE_S = 1.0
"""on_stop lets a ``call.end`` the reader is running finish for this long before cancelling it."""
MAX_PLAY_LOOPS = 10
MAX_PENDING_JOBS = 32
"""Speech requests (say/play) one agent may have waiting at once; more are refused with ``error``."""
MAX_CONCURRENT_DOWNLOADS = 2
"""``play`` downloads of one call that run at once (the HTTP client's pool is shared by all calls)."""
MAX_TURN_CHARS = 20_000
"""A streamed reply longer than this is cut there, and the agent is told."""
DISCONNECT_GRACE_S = 120.0
"""When the agent disconnects, what it already sent is still spoken, for at most this long."""
SNIPPET_CHARS = 60


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


@dataclass(eq=False)
class _Turn:
    """One streamed reply: tokens in, one ``call.say`` out."""

    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    text: list[str] = field(default_factory=list)
    discarding: bool = False
    """The call side cut this turn: drop its remaining tokens (and report them)."""
    discarded: list[str] = field(default_factory=list)
    """The start of what was discarded after an interruption (enough to quote back)."""
    chars: int = 0
    refused: bool = False
    """Already reported (too long, or no room): the rest is dropped without another report."""


class RelayAgent(Agent):
    """Speaks ConversationRelay to the agent application at ``url`` (ws:// or wss://).

    ``end`` keeps ConversationRelay's meaning (the stream closes, Twilio continues with the next
    TwiML verb) unless its handoffData asks for a hang-up (``{"hangup": true}``) or
    ``end_hangs_up`` is set; a hang-up that cannot be done is reported to the agent as ``error``."""

    def __init__(
        self,
        url: str,
        *,
        auth_token: str | None,
        http_client: httpx.AsyncClient,
        connect_timeout_s: float = 5.0,
        max_message_bytes: int = 64 * 1024,
        play_max_bytes: int = 5 * 1024 * 1024,
        egress: EgressPolicy | None = None,
        play_budget_bytes: int = 32 * 1024 * 1024,
        end_hangs_up: bool = False,
    ) -> None:
        self.url = url
        self.auth_token = auth_token
        self.http = http_client
        self.connect_timeout_s = connect_timeout_s
        self.max_message_bytes = max_message_bytes
        self.play_max_bytes = play_max_bytes
        self.egress = egress if egress is not None else EgressPolicy()
        """Where the agent's URL may point (``play`` downloads are checked by ``http_client``)."""
        self.play_budget = PlayBudget(play_budget_bytes)
        self.end_hangs_up = end_hangs_up
        """Every ``end`` hangs up the call, not only one whose handoffData asks for it."""
        self.session_id = "VX" + uuid.uuid4().hex
        self._ws: ClientConnection | None = None
        self._call: CallControl | None = None
        self._reader: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._last_submitted: asyncio.Event | None = None
        self._turn: _Turn | None = None
        self._stopping = False
        self._ended = False
        self._in_call_end = False
        self._downloads = asyncio.Semaphore(MAX_CONCURRENT_DOWNLOADS)

    # ---- hooks ------------------------------------------------------------------------------------
    async def on_start(self, call: CallControl) -> None:
        self._call = call
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = sign(self.auth_token, self.url, {})
        try:
            async with asyncio.timeout(self.connect_timeout_s + 1.0):
                self._ws = await self._connect(headers)
        except EgressRefused as exc:
            log.warning("agent %s refused: %s", self.url, exc)
            raise AgentError(f"agent URL refused: {EgressRefused.PUBLIC_MESSAGE}") from None
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ValueError) as exc:
            raise AgentError(f"cannot connect to agent {self.url}: {_describe(exc)}") from None
        info = call.info
        setup = Setup(
            session_id=self.session_id,
            account_sid=info.account_sid,
            call_sid=info.call_sid,
            from_=info.from_number,
            to=info.to_number,
            direction=info.direction,
            custom_parameters=dict(info.custom_parameters),
            call_type="PSTN",
            call_status="IN-PROGRESS",
        )
        try:
            await self._ws.send(setup.to_json())
        except ConnectionClosed as exc:
            await self._close_ws()
            raise AgentError(f"agent {self.url} closed the connection at setup: {exc}") from None
        self._reader = asyncio.create_task(self._read_loop(), name=f"relay-reader:{info.call_sid}")

    async def _connect(self, headers: dict[str, str]) -> ClientConnection:
        """Resolve the agent's host, check every address (``EgressPolicy``), then connect to a
        checked address, never to a second DNS answer. The URL still gives the Host header and,
        for wss://, the TLS server name; no proxy from the environment is used."""
        uri = parse_uri(self.url)
        addresses = await self.egress.resolve(uri.host, uri.port)
        last: Exception | None = None
        for address in addresses:
            try:
                return await connect(
                    self.url,
                    host=address,
                    port=uri.port,
                    proxy=None,
                    additional_headers=headers,
                    open_timeout=self.connect_timeout_s,
                    close_timeout=CLOSE_TIMEOUT_S,
                    max_size=self.max_message_bytes * HARD_SIZE_FACTOR,
                    user_agent_header="voice-bridge ConversationRelay",
                )
            except OSError as exc:  # this address does not answer: try the next checked one
                last = exc
        assert last is not None
        raise last

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        await self._new_exchange()
        await self._send(Dtmf(digit=digit))

    async def on_interrupt(self, call: CallControl, heard_text: str, played_ms: int) -> None:
        await self._send(
            Interrupt(utterance_until_interrupt=heard_text, duration_until_interrupt_ms=played_ms)
        )

    async def on_caller_speech(self, call: CallControl, text: str, final: bool) -> None:
        await self._new_exchange()
        await self._send(Prompt(voice_prompt=text, lang="en-US", last=final))

    async def on_stop(self, call: CallControl) -> None:
        self._stopping = True
        current = asyncio.current_task()
        reader = self._reader
        if self._in_call_end and reader is not None and reader is not current and not reader.done():
            # the reader is closing the call's stream for us: let it finish rather than cut it
            await asyncio.wait([reader], timeout=END_GRACE_S)
        tasks = [t for t in (self._reader, *self._jobs) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        self._jobs.clear()
        self._turn = None
        await self._close_ws()

    # ---- reading the agent ------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        reason = "agent disconnected"
        try:
            async for raw in ws:
                if not await self._handle(raw):
                    return
        except ConnectionClosed as exc:
            log.info("agent %s connection lost: %s", self.url, exc)
        except Exception:
            log.exception("relay reader for %s failed", self.url)
            reason = "agent relay failed"
        if not self._stopping and not self._ended:
            log.info("agent %s disconnected (close code %s)", self.url, ws.close_code)
            # What the agent sent before it left is still spoken: it cannot be told otherwise.
            await self._close_turn()
            self._ended = True
            jobs = list(self._jobs)
            if jobs:
                await asyncio.wait(jobs, timeout=DISCONNECT_GRACE_S)
            await self._end_call(reason)

    async def _handle(self, raw: str | bytes) -> bool:
        """Process one agent message; False when the session is over."""
        if isinstance(raw, bytes):
            await self._error("binary WebSocket frames are not supported; send JSON text messages")
            return True
        size = len(raw.encode())
        if size > self.max_message_bytes:
            await self._error(f"message too large: {size} bytes (limit {self.max_message_bytes})")
            return True
        try:
            message = parse_agent_message(raw)
        except RelayProtocolError as exc:
            await self._error(f"invalid message: {exc}")
            return True
        if isinstance(message, Text):
            await self._on_text(message)
        elif isinstance(message, Play):
            await self._close_turn()
            if await self._room_for_job(f"play {message.source}"):
                self._on_play(message)
        elif isinstance(message, SendDigits):
            await self._error(
                "sendDigits is not supported by voice-bridge: Twilio sends digits only with a TwiML "
                "<Play digits>, which would replace this call's TwiML and end the media stream"
            )
        elif isinstance(message, Language):
            await self._error(
                "language switching is not supported by this voice: "
                f"ttsLanguage={message.tts_language!r} ignored; the call goes on unchanged"
            )
        elif isinstance(message, End):
            await self._on_end(message)
            return False
        return True

    async def _on_text(self, message: Text) -> None:
        turn = self._turn
        token = message.token or ""
        if turn is not None:
            if turn.discarding:
                if not turn.refused and sum(map(len, turn.discarded)) < 4 * SNIPPET_CHARS:
                    turn.discarded.append(token)
                if message.last:
                    self._turn = None
                    await self._report_discarded(turn)
                return
            turn.text.append(token)
            turn.chars += len(token)
            if turn.chars > MAX_TURN_CHARS:
                turn.discarding = turn.refused = True
                turn.queue.put_nowait(None)
                await self._error(f"reply longer than {MAX_TURN_CHARS} characters: the rest is not "
                                  "spoken")
                if message.last:
                    self._turn = None
                return
            turn.queue.put_nowait(token)
            if message.last:
                turn.queue.put_nowait(None)
                self._turn = None
            return
        flags = {"interruptible": message.interruptible, "preemptible": message.preemptible}
        if message.last:
            if token.strip() and await self._room_for_job(token):
                self._start_job(lambda call: call.say(token, **flags), text=token)
            return
        if not await self._room_for_job(token):
            # the rest of this reply is dropped with it (reported once), not spoken in pieces
            self._turn = _Turn(discarding=True, refused=True)
            return
        turn = _Turn()
        turn.text.append(token)
        turn.chars = len(token)
        turn.queue.put_nowait(token)
        self._turn = turn
        self._start_job(lambda call: call.say(_drain(turn.queue), **flags), text="", turn=turn)

    async def _room_for_job(self, what: str) -> bool:
        if len(self._jobs) < MAX_PENDING_JOBS:
            return True
        await self._error(f"too many speech requests waiting ({MAX_PENDING_JOBS}); not spoken: "
                          f"{_snippet(what)!r}")
        return False

    async def _report_discarded(self, turn: _Turn) -> None:
        """Tokens of a reply the caller talked over are not spoken; say so rather than lose them."""
        text = "".join(turn.discarded).strip()
        turn.discarded.clear()
        if text and not turn.refused:
            await self._error(f"not spoken, the reply was interrupted: {_snippet(text)!r}")

    def _on_play(self, message: Play) -> None:
        source = message.source
        loops = message.loop if message.loop is not None else 1
        held = 0  # this play's share of the call's play budget, given back when the job ends

        def release() -> None:
            nonlocal held
            self.play_budget.release(held)
            held = 0

        async def prepare() -> Callable[[CallControl], Awaitable[SpeechResult]] | None:
            # runs in the play's speech job: the download overlaps speech queued before it
            nonlocal held
            try:
                async with self._downloads:
                    body = await download_audio(self.http, source, max_bytes=self.play_max_bytes)
                need = decoded_bytes(body)
                if not self.play_budget.reserve(need):
                    await self._error(
                        f"play {source}: refused: this call's play audio would exceed its budget "
                        f"({megabytes(self.play_budget.held_bytes)} held, {megabytes(need)} more "
                        f"asked, limit {megabytes(self.play_budget.limit_bytes)})")
                    return None
                held = need
                audio, rate = await asyncio.to_thread(decode_wav, body, source=source)
                del body
                # the header's promise, corrected to what decoding really holds
                if audio.nbytes != held:
                    self.play_budget.release(held)
                    held = 0
                    if not self.play_budget.reserve(audio.nbytes):
                        await self._error(f"play {source}: refused: this call's play audio would "
                                          "exceed its budget")
                        return None
                    held = audio.nbytes
            except AudioFetchError as exc:
                await self._error(f"play {source}: {exc}")
                return None
            except Exception:
                log.exception("fetching %s failed", source)
                await self._error(f"play {source}: download failed")
                return None
            n = loops if 1 <= loops <= MAX_PLAY_LOOPS else MAX_PLAY_LOOPS
            if n != loops:
                await self._error(f"play {source}: loop={loops} is not supported; playing {n} times")
            # one buffer, played n times: a loop costs no memory
            return lambda call: call.play_audio(
                audio, rate, label=source, interruptible=message.interruptible,
                preemptible=message.preemptible, loops=n,
            )

        self._start_job(None, text=f"play {source}", prepare=prepare, cleanup=release)

    async def _on_end(self, message: End) -> None:
        await self._close_turn()
        self._ended = True
        jobs = list(self._jobs)
        if jobs:
            await asyncio.wait(jobs)
        handoff = message.handoff_data or ""
        await self._end_call(f"agent ended: {handoff}" if handoff else "agent ended",
                             hangup=self.end_hangs_up or asks_for_hangup(handoff))
        await self._close_ws()

    async def _end_call(self, reason: str, *, hangup: bool = False) -> None:
        self._ended = True
        if self._call is None:
            return
        self._in_call_end = True  # until the agent has been told how it went (see on_stop)
        try:
            if not hangup:
                await self._call.end(reason)
                return
            result = await self._call.end(reason, hangup=True)
            if result.error:
                await self._error(f"end: the call was not hung up: {result.error}")
        finally:
            self._in_call_end = False

    # ---- speech jobs ------------------------------------------------------------------------------
    def _start_job(
        self,
        speak: Callable[[CallControl], Awaitable[SpeechResult]] | None,
        *,
        text: str,
        turn: _Turn | None = None,
        prepare: Callable[[], Awaitable[Callable[[CallControl], Awaitable[SpeechResult]] | None]]
        | None = None,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        previous = self._last_submitted
        submitted = asyncio.Event()
        self._last_submitted = submitted

        async def job() -> None:
            try:
                action = speak
                if prepare is not None:
                    action = await prepare()
                if previous is not None:
                    await previous.wait()
                submitted.set()
                if action is None or self._call is None:
                    return
                try:
                    result = await action(self._call)
                except Exception as exc:
                    log.exception("call-side speech failed")
                    result = SpeechResult(text=text, outcome=SpeechOutcome.FAILED, error=_describe(exc))
                await self._report(result, text=text if turn is None else "".join(turn.text), turn=turn)
            finally:
                submitted.set()  # never hold up the jobs behind this one
                if cleanup is not None:
                    cleanup()

        task = asyncio.create_task(job(), name="relay-speech")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _report(self, result: SpeechResult, *, text: str, turn: _Turn | None) -> None:
        if turn is not None and result.outcome is not SpeechOutcome.PLAYED and self._turn is turn:
            turn.discarding = True
        if result.outcome is SpeechOutcome.FAILED:
            what = _snippet(result.text or text) or "(empty)"
            await self._error(f"speech failed for {what!r}: {result.error or 'unknown error'}")

    async def _close_turn(self) -> None:
        """A non-text message ends a streamed reply that the agent left open."""
        turn, self._turn = self._turn, None
        if turn is None:
            return
        if turn.discarding:
            await self._report_discarded(turn)
        else:
            turn.queue.put_nowait(None)

    async def _new_exchange(self) -> None:
        """A caller event starts a new exchange: stop discarding an interrupted turn's tail."""
        if self._turn is not None and self._turn.discarding:
            turn, self._turn = self._turn, None
            await self._report_discarded(turn)

    # ---- sending ----------------------------------------------------------------------------------
    async def _error(self, description: str) -> None:
        log.info("to agent %s: error: %s", self.url, description)
        await self._send(Error(description=description))

    async def _send(self, message: Any) -> None:
        ws = self._ws
        if ws is None:
            log.debug("agent not connected; %s dropped", type(message).__name__)
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await ws.send(message.to_json())
        except ConnectionClosed:
            log.info("agent %s gone; %s dropped", self.url, type(message).__name__)
        except TimeoutError:
            log.warning("agent %s is not reading; %s dropped", self.url, type(message).__name__)
        except Exception as exc:
            log.warning("sending %s to agent %s failed: %s", type(message).__name__, self.url, exc)

    async def _close_ws(self) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S + 0.5):
                await ws.close()
        except Exception as exc:  # a hung or broken peer: drop the TCP connection
            log.debug("closing agent socket: %r", exc)
            with contextlib.suppress(Exception):
                ws.transport.abort()


def asks_for_hangup(handoff_data: str) -> bool:
    """Whether an ``end``'s handoffData asks to hang up: a JSON object with ``"hangup": true``
    (or ``"true"``). Any other handoffData keeps ConversationRelay's meaning of ``end``: the stream
    closes and Twilio continues with the next TwiML verb (an action URL receives the handoffData)."""
    try:
        data = json.loads(handoff_data)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    value = data.get("hangup")
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


async def _drain(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while True:
        token = await queue.get()
        if token is None:
            return
        yield token


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
