"""Replaying one recorded call against a running bridge (the load test's and the simulator's core).

``CallReplay`` places the call as Twilio would: the webhook (signed when the bridge has an auth
token), then the media stream it names, then Twilio's recorded events on their recorded timing,
while its ``RecordedAgent`` (replay_agent.py) answers the bridge's agent socket with the recorded
agent messages. What the caller heard and when is the ``ReplayEmulator``'s (replay_emulator.py);
``collect_result`` (replay_result.py) turns it into a ``CallResult``.

Timing: every event of a recording is replayed at ``start_sent + (t - t_start)``, where ``t_start``
is the recorded time of Twilio's ``start`` message and ``start_sent`` the moment the emulator sent
its own ``start``. Agent messages use the same origin (the load generator sends both sides, on one
clock), but none is sent before the bridge's ``setup`` arrives: those that fall due earlier go out
at once, in order, when it does. The recorded ``stop`` is sent at its time, or later if the bridge
is still speaking (or an agent turn still waits for its audio), for at most ``tail_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
import uuid
import warnings
import wave
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import websockets

from telephony.recorded_call import SILENCE, RecordedCall
from telephony.testing.replay_agent import AgentServer, RecordedAgent
from telephony.testing.replay_emulator import ReplayEmulator
from telephony.testing.replay_result import CallResult, collect_result
from telephony.testing.twilio_emulator import TwilioEmulator
from tts_core.audio.telephony_format import FRAME_S, TELEPHONY_RATE

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


class CallReplay:
    """Replays one recorded call; ``run`` returns a ``CallResult`` and never raises (a cancelled
    replay hangs up and reports ``cut``)."""

    def __init__(
        self,
        recording: RecordedCall,
        *,
        call_id: str,
        base_url: str,
        agent_server: AgentServer | None,
        auth_token: str | None = None,
        public_url: str | None = None,
        voice: str | None = None,
        preset: str | None = None,
        greeting: str | None = "",
        clock_zero: float | None = None,
        tail_timeout_s: float = 10.0,
        keep_audio: bool = False,
        keep_timeline: bool = False,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.recording = recording
        self.call_id = call_id
        self.base_url = base_url.rstrip("/")
        self.public_url = (public_url or base_url).rstrip("/")
        self.agent_server = agent_server
        self.auth_token = auth_token
        self.voice = voice
        self.preset = preset
        self.greeting = greeting
        """Greeting parameter sent to the webhook; None: don't send one (the bridge's default)."""
        self.tail_timeout_s = tail_timeout_s
        self.keep_audio = keep_audio
        self.keep_timeline = keep_timeline
        self._http = http
        self.clock_zero = time.monotonic() if clock_zero is None else clock_zero
        hexid = uuid.uuid4().hex
        self.call_sid = "CA" + hexid
        self.stream_sid = "MZ" + hexid
        self.result = CallResult(call_id, recording.name, self.call_sid)
        self.emulator: ReplayEmulator | None = None
        self.agent = RecordedAgent(recording, self.result, self.call_sid)
        self._onsets = set(recording.speech_onsets())
        self._twilio_done = False
        self._started_at = 0.0

    # ---- the webhook ---------------------------------------------------------------------------------
    def webhook_query(self) -> dict[str, str]:
        query: dict[str, str] = {}
        if self.greeting is not None:
            query["greeting"] = self.greeting
        if self.voice:
            query["voice"] = self.voice
        if self.preset:
            query["preset"] = self.preset
        if self.agent_server is not None:
            query["agentUrl"] = self.agent_server.url_for(self.call_id)
        return query

    # ---- the call ------------------------------------------------------------------------------------
    async def run(self) -> CallResult:
        result = self.result
        self._started_at = time.monotonic()
        result.started_at_s = round(self._started_at - self.clock_zero, 3)
        try:
            async with contextlib.AsyncExitStack() as stack:
                http: httpx.AsyncClient = (self._http if self._http is not None
                                           else await stack.enter_async_context(httpx.AsyncClient()))
                url, params = await place_webhook(http, self.base_url, self.public_url, self.call_sid,
                                                  self.webhook_query(), self.auth_token)
            self.emulator = ReplayEmulator(url, call_sid=self.call_sid, stream_sid=self.stream_sid,
                                           custom_parameters=params, keep_audio=self.keep_audio)
            try:
                await self.emulator.connect()
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                raise _CallFailed("connect_failed", f"media stream connect failed: {exc!r}") from None
            assert self.emulator.start_sent_at is not None
            self.emulator.note(self.emulator.start_sent_at, "start_sent")
            greeting = params.get("greeting", "") if self.greeting is None else self.greeting
            if greeting:
                self.emulator.add_turn("greeting", greeting, self.emulator.start_sent_at)
            self.agent.emulator = self.emulator
            self.agent.started.set()
            await self._send_twilio()
            result.status = "completed"
        except BaseException as exc:
            settle_failure(result, exc)
        finally:
            await self._finish()
        return result

    async def _send_twilio(self) -> None:
        emulator = self.emulator
        assert emulator is not None and emulator.start_sent_at is not None
        origin = emulator.start_sent_at
        stop_at: float | None = None
        last_due = origin - FRAME_S
        for t, kind, data in self.recording.twilio_actions():
            if emulator.closed:
                break
            due = origin + t
            if kind == "media":
                last_due = due
            if kind == "stop":
                stop_at = due
                break
            delay = due - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
            try:
                if kind == "media":
                    if round(t, 4) in self._onsets:
                        now = time.monotonic()
                        emulator.speech_onsets.append(now)
                        emulator.note(now, "caller_speech_onset")
                    await emulator.send_media(data)
                elif kind == "dtmf":
                    await emulator.send_dtmf(data)
            except websockets.ConnectionClosed:
                break
        self._twilio_done = not emulator.closed
        if not emulator.closed:
            # Twilio streams caller audio until the call ends: silence while we wait.
            filler = asyncio.create_task(self._send_silence(last_due))
            try:
                if stop_at is not None and stop_at > time.monotonic():
                    await asyncio.sleep(stop_at - time.monotonic())
                await self._wait_quiet()
            finally:
                filler.cancel()
                await asyncio.gather(filler, return_exceptions=True)
        if emulator.closed:
            self.result.closed_by = "bridge"
        else:
            self.result.closed_by = "replay"
            emulator.note(time.monotonic(), "stop_sent")
            await emulator.hang_up()

    async def _send_silence(self, last_due: float) -> None:
        emulator = self.emulator
        assert emulator is not None
        due = max(last_due + FRAME_S, time.monotonic())
        with contextlib.suppress(websockets.ConnectionClosed):
            while not emulator.closed:
                delay = due - time.monotonic()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                await emulator.send_media(SILENCE)
                due += FRAME_S

    async def _wait_quiet(self) -> None:
        """Until the agent has sent everything, no turn waits for audio and nothing plays."""
        emulator = self.emulator
        assert emulator is not None
        deadline = time.monotonic() + self.tail_timeout_s
        quiet_since: float | None = None
        while time.monotonic() < deadline and not emulator.closed:
            quiet = self.agent.done.is_set() and not emulator.pending and emulator.idle()
            now = time.monotonic()
            if quiet:
                quiet_since = quiet_since or now
                if now - quiet_since >= 0.2:
                    return
            else:
                quiet_since = None
            await asyncio.sleep(0.05)
        if not emulator.closed and time.monotonic() >= deadline:
            waiting = "agent messages unsent" if not self.agent.done.is_set() else (
                "turn without audio" if emulator.pending else "bridge still speaking")
            self.result.errors.append(f"timeout: {waiting} {self.tail_timeout_s:.0f} s after the "
                                      "recording ended")

    async def _finish(self) -> None:
        result = self.result
        emulator = self.emulator
        if emulator is not None:
            with contextlib.suppress(Exception):
                if not emulator.closed and result.status == "cut":
                    await asyncio.shield(emulator.hang_up())
                await emulator.close()
        await self.agent.close()
        result.duration_s = round(time.monotonic() - self._started_at, 3)
        if emulator is None:
            return
        collect_result(result, emulator, clock_zero=self.clock_zero,
                       agent_expected=bool(self.recording.agent_actions), agent_ended=self.agent.ended,
                       twilio_done=self._twilio_done, keep_timeline=self.keep_timeline)


class _CallFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def settle_failure(result: CallResult, exc: BaseException) -> None:
    """How a replayed call that did not complete ends up in its result (both generators): cut by the
    run (its cancellation absorbed, so the run goes on), failed for a reason the replay names, or
    failed by a bug in the replay, which must not take the whole run down. Anything else (a
    KeyboardInterrupt) is raised again."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        result.status = "cut"
    elif isinstance(exc, _CallFailed):
        result.status = "failed"
        result.errors.append(f"{exc.kind}: {exc.detail}")
    elif isinstance(exc, Exception):
        result.status = "failed"
        result.errors.append(f"replay_error: {exc!r}")
    else:
        raise exc


async def place_webhook(http: httpx.AsyncClient, base_url: str, public_url: str, call_sid: str,
                    query_params: dict[str, str], auth_token: str | None) -> tuple[str, dict[str, str]]:
    """POST /twiml as Twilio does when the call arrives (signed over ``public_url`` when there is a
    token); returns the stream URL and parameters of the TwiML it answers."""
    path, form, headers = webhook_request(public_url, call_sid, query_params, auth_token)
    response = await http.post(base_url + path, data=form, headers=headers, timeout=15.0)
    return webhook_answer(response.status_code, response.text, base_url)


def webhook_request(public_url: str, call_sid: str, query_params: dict[str, str],
                    auth_token: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """The path, form and headers of Twilio's webhook POST (signed when there is a token)."""
    query = urllib.parse.urlencode(query_params, quote_via=urllib.parse.quote)
    path = "/twiml" + (f"?{query}" if query else "")
    form = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": "+15550001111",
            "To": "+15550002222", "Direction": "inbound", "CallStatus": "ringing"}
    headers = {}
    if auth_token:
        from twilio.request_validator import RequestValidator

        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(
            public_url + path, form)
    return path, form, headers


def webhook_answer(status: int, text: str, base_url: str) -> tuple[str, dict[str, str]]:
    """The stream URL and parameters of the webhook's answer, or ``_CallFailed``."""
    if status != 200:
        raise _CallFailed("webhook_failed", f"POST /twiml answered {status}: {text[:200]}")
    return parse_twiml(text, base_url)


def parse_twiml(xml: str, base_url: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream>`` URL (re-pointed at ``base_url``'s host: PUBLIC_URL may name a
    proxy we cannot reach) and its ``<Parameter>``s."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise _CallFailed("webhook_failed", f"TwiML is not XML: {exc}") from None
    stream = root.find("./Connect/Stream")
    if stream is None or "url" not in stream.attrib:
        raise _CallFailed("webhook_failed", f"TwiML has no <Connect><Stream url>: {xml[:200]}")
    params = {p.attrib.get("name", ""): p.attrib.get("value", "") for p in stream.findall("Parameter")}
    stream_url = urllib.parse.urlsplit(stream.attrib["url"])
    base = urllib.parse.urlsplit(base_url)
    scheme = "wss" if base.scheme == "https" else "ws"
    # A bridge serving the stream on its own port (VOICE_BRIDGE_STREAM_PORT, no PUBLIC_URL) names
    # that port on the same host: keep it.
    netloc = stream_url.netloc if stream_url.hostname == base.hostname else base.netloc
    return urllib.parse.urlunsplit((scheme, netloc, stream_url.path, "", "")), params


def check_loopback(url: str, allow_remote: bool) -> None:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return
    if not allow_remote:
        raise SystemExit(f"refusing to load {host!r}: only loopback bridges (127.0.0.1, localhost) "
                         "unless --allow-remote")


def heard_wav(emulator: TwilioEmulator, path: str | Path) -> float:
    """Write what the caller heard (8 kHz 16-bit mono WAV); returns its length in seconds."""
    pcm = audioop.ulaw2lin(bytes(emulator.heard), 2)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(TELEPHONY_RATE)
        out.writeframes(pcm)
    return len(emulator.heard) / TELEPHONY_RATE
