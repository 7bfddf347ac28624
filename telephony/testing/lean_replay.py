"""One recorded call replayed by the lean generator (``LeanReplay``), and the one ticker that drives
every call of a run (``SharedTicker``).

``LeanReplay`` places the call as ``CallReplay`` does (the signed webhook, then the stream it names
with the webhook's parameters in ``start``, the recorded agent on the shared loopback agent server)
and reports the same ``CallResult``; it differs in how it is driven: instead of a task per call
sleeping 20 ms for each inbound message, and another for Twilio's playback clock, the ticker calls
``tick(now)`` every 20 ms, which sends what fell due, plays the playback slots that fell due and
decides when the call is over. Calls are spread over ``GROUPS`` phases of the 20 ms period (the
ticker runs every 5 ms, each time for a quarter of the calls), so the bridge sees the calls'
messages spread over the period as from real phones, not in one burst.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time

import httpx

from telephony.recorded_call import RecordedCall
from telephony.testing.lean_caller import LeanCaller, script_of
from telephony.testing.lean_socket import HandshakeError, post_form
from telephony.testing.replay import CallReplay, _CallFailed, settle_failure, webhook_answer, webhook_request
from telephony.testing.replay_agent import AgentServer
from telephony.testing.replay_result import CallResult, collect_result
from telephony.testing.twilio_emulator import SILENCE
from tts_core.audio.telephony_format import FRAME_S

GROUPS = 4
_SILENCE_B64 = base64.b64encode(SILENCE).decode()
_SCRIPT, _TAIL, _DONE = 0, 1, 2


class SharedTicker:
    """Calls ``tick(now)`` on every registered call once per 20 ms, in ``GROUPS`` phases."""

    def __init__(self, phases: int = GROUPS) -> None:
        self.phases = phases
        self.groups: list[dict[int, LeanReplay]] = [{} for _ in range(phases)]
        self._step = FRAME_S / phases
        self._n = 0
        self._t0 = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._next_group = 0
        self.late_ticks = 0

    def add(self, call: LeanReplay) -> None:
        self.groups[self._next_group][id(call)] = call
        self._next_group = (self._next_group + 1) % self.phases

    def remove(self, call: LeanReplay) -> None:
        for group in self.groups:
            group.pop(id(call), None)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._handle = asyncio.get_running_loop().call_later(self._step, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = time.monotonic()
        group = self.groups[self._n % self.phases]
        for call in list(group.values()):
            try:
                call.tick(now)
            except Exception as exc:  # a bug in one call fails that call, not the ticker
                call.abort(exc)
        self._n += 1
        due = self._t0 + self._n * self._step
        if due < now - self._step:  # fell behind: skip ahead (calls catch up from their clocks)
            self.late_ticks += 1
            self._n = int((now - self._t0) / self._step) + 1
            due = self._t0 + self._n * self._step
        self._handle = asyncio.get_running_loop().call_later(max(0.0, due - time.monotonic()), self._tick)


class LeanReplay(CallReplay):
    """One recorded call on the lean generator; ``run`` returns a ``CallResult``, never raises."""

    def __init__(self, recording: RecordedCall, *, ticker: SharedTicker, call_id: str, base_url: str,
                 agent_server: AgentServer | None, http: httpx.AsyncClient, **kwargs: object) -> None:
        super().__init__(recording, call_id=call_id, base_url=base_url, agent_server=agent_server,
                         http=http, **kwargs)  # type: ignore[arg-type]
        self.ticker = ticker
        self.caller: LeanCaller | None = None
        self._script = script_of(recording)
        self._i = 0
        self._phase = _SCRIPT
        self._origin = 0.0
        self._last_t = -FRAME_S
        self._stop_at: float | None = None
        self._next_silence = 0.0
        self._quiet_deadline: float | None = None
        self._quiet_since: float | None = None
        self._play_zero: float | None = None
        self._slots = 0
        self._done: asyncio.Future[None] | None = None

    async def run(self) -> CallResult:
        result = self.result
        self._started_at = time.monotonic()
        result.started_at_s = round(self._started_at - self.clock_zero, 3)
        try:
            path, form, headers = webhook_request(self.public_url, self.call_sid, self.webhook_query(),
                                                  self.auth_token)
            try:
                status, text = await post_form(self.base_url, path, form, headers)
            except (OSError, ValueError, IndexError, TimeoutError) as exc:
                raise _CallFailed("webhook_failed", f"POST /twiml failed: {exc!r}") from None
            url, params = webhook_answer(status, text, self.base_url)
            caller = self.caller = LeanCaller(call_sid=self.call_sid, stream_sid=self.stream_sid,
                                              custom_parameters=params, keep_timeline=self.keep_timeline)
            self.emulator = caller  # type: ignore[assignment]  # what the progress line reads
            try:
                await caller.socket.connect(url)
            except (OSError, HandshakeError, TimeoutError) as exc:
                raise _CallFailed("connect_failed", f"media stream connect failed: {exc!r}") from None
            caller.send_start()
            assert caller.start_sent_at is not None
            self._origin = caller.start_sent_at
            greeting = params.get("greeting", "") if self.greeting is None else self.greeting
            if greeting:
                caller.add_turn("greeting", greeting, caller.start_sent_at)
            self.agent.emulator = caller  # type: ignore[assignment]
            self.agent.started.set()
            self._done = asyncio.get_running_loop().create_future()
            self.ticker.add(self)
            await self._done
            result.status = "completed"
        except BaseException as exc:
            settle_failure(result, exc)
        finally:
            self.ticker.remove(self)
            await self._finish_lean()
        return result

    def tick(self, now: float) -> None:
        """Send what fell due, play the slots that fell due, and end the call when it is over."""
        caller = self.caller
        assert caller is not None
        if self._phase == _SCRIPT:
            self._send_due(caller, now)
        elif self._phase == _TAIL:
            self._tail(caller, now)
        if self._play_zero is None:
            self._play_zero = now - 0.001
        due = int((now - self._play_zero) / FRAME_S)
        while self._slots < due:
            self._slots += 1
            caller.playback.slot(now)
        if caller.closed and self._phase != _DONE:
            self._end(caller)

    def _send_due(self, caller: LeanCaller, now: float) -> None:
        script, i, n = self._script, self._i, len(self._script)
        limit = now + 0.001 - self._origin
        while i < n and script[i][0] <= limit:
            t, kind, data, onset = script[i]
            i += 1
            if kind == "media":
                if onset:
                    caller.speech_onsets.append(now)
                    caller.note(now, "caller_speech_onset")
                caller.send_media(data)
                self._last_t = t
            elif kind == "dtmf":
                caller.send_dtmf(data, now)
            else:
                self._stop_at = self._origin + t
                i = n
        self._i = i
        if i >= n and not caller.closed:
            self._phase = _TAIL
            self._twilio_done = True
            self._next_silence = max(self._origin + self._last_t + FRAME_S, now)

    def _tail(self, caller: LeanCaller, now: float) -> None:
        """Twilio streams caller silence until the call ends; the call ends once the agent has sent
        everything, no turn waits for audio and nothing plays, for 0.2 s (or at the tail timeout)."""
        while self._next_silence <= now + 0.001:
            caller.send_media(_SILENCE_B64)
            self._next_silence += FRAME_S
        if self._stop_at is not None and now < self._stop_at:
            return
        if self._quiet_deadline is None:
            self._quiet_deadline = now + self.tail_timeout_s
        if self.agent.done.is_set() and not caller.pending and caller.idle():
            self._quiet_since = self._quiet_since or now
            if now - self._quiet_since >= 0.2:
                self._end(caller)
        else:
            self._quiet_since = None
        if self._phase != _DONE and now >= self._quiet_deadline:
            waiting = "agent messages unsent" if not self.agent.done.is_set() else (
                "turn without audio" if caller.pending else "bridge still speaking")
            self.result.errors.append(f"timeout: {waiting} {self.tail_timeout_s:.0f} s after the "
                                      "recording ended")
            self._end(caller)

    def abort(self, exc: Exception) -> None:
        self._phase = _DONE
        self.ticker.remove(self)
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    def _end(self, caller: LeanCaller) -> None:
        self._phase = _DONE
        self.result.closed_by = "bridge" if caller.closed else "replay"
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _finish_lean(self) -> None:
        result = self.result
        caller = self.caller
        if caller is not None:
            with contextlib.suppress(Exception):
                if not caller.closed:
                    if self._phase == _DONE or result.status == "cut":
                        caller.note(time.monotonic(), "stop_sent")
                        caller.send_stop()
                    await asyncio.shield(caller.socket.close())
            if caller.socket.protocol_errors:
                caller.stats.invalid.extend(caller.socket.protocol_errors)
            caller.stats.close_code = caller.socket.close_code
            caller.stats.close_reason = caller.socket.close_reason
        await self.agent.close()
        result.duration_s = round(time.monotonic() - self._started_at, 3)
        if caller is None:
            return
        collect_result(result, caller, clock_zero=self.clock_zero,  # type: ignore[arg-type]
                       agent_expected=bool(self.recording.agent_actions), agent_ended=self.agent.ended,
                       twilio_done=self._twilio_done, keep_timeline=self.keep_timeline)
