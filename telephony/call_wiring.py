"""How a call's two audio parts are built from the server's settings: the listener (caller audio in:
barge-in and end of turn) and the speaker (agent speech out: render, pace, marks).

Apart from the call because this is configuration (which setting feeds which knob), not the call's
behaviour; the call passes in what the parts report back to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from telephony.barge_in import BargeInSettings
from telephony.listener import CallerListener
from telephony.playout import PlayoutClock
from telephony.services import Bridge
from telephony.speaker import Speaker, SpeakerHooks, Utterance
from telephony.turns import EchoReference, TurnSettings, TurnTracker
from telephony.twilio.protocol import OutboundEncoder, Start
from tts_core.presets import Preset
from tts_core.voices import Voice


def echo_reference(bridge: Bridge) -> EchoReference | None:
    """What the bot just said, so its echo on the line is not taken for the caller (if enabled)."""
    margin_db = bridge.settings.stt_echo_margin_db
    return EchoReference(margin_db) if margin_db > 0 else None


def build_listener(bridge: Bridge, start: Start, echo: EchoReference | None, *,
                   on_barge_in: Callable[[], None],
                   on_speech: Callable[[str, bool], None]) -> CallerListener:
    """One voice-activity state machine for barge-in and end of turn (telephony/turns.py)."""
    settings = bridge.settings
    tracker = TurnTracker(
        TurnSettings(
            endpoint_ms=settings.stt_endpoint_ms, speculative_ms=settings.stt_speculative_ms,
            preroll_ms=settings.stt_preroll_ms, max_turn_ms=settings.stt_max_turn_ms,
            partials=start.custom_parameters.get("partialPrompts", "").lower() == "true",
            partial_interval_ms=settings.stt_partial_interval_ms,
        ),
        BargeInSettings(aggressiveness=settings.barge_in_aggressiveness,
                        min_speech_ms=settings.barge_in_min_speech_ms),
    )
    return CallerListener(tracker, recogniser=bridge.recogniser, echo=echo, metrics=bridge.metrics,
                          on_barge_in=on_barge_in, on_speech=on_speech, name=start.call_sid)


@dataclass(frozen=True)
class SpeakerEvents:
    """What the call wants to hear from its speaker."""

    on_first_frame: Callable[[Utterance, float], None]
    on_finished: Callable[[Utterance], None]
    on_stalled: Callable[[str], None]


def build_speaker(bridge: Bridge, start: Start, *, voice_id: str, voice: Voice | None, preset: Preset,
                  send_text: Callable[[str], Awaitable[None]], echo: EchoReference | None,
                  events: SpeakerEvents) -> Speaker:
    settings = bridge.settings
    metrics = bridge.metrics

    def on_underrun(gap_s: float) -> None:
        metrics.underruns.inc()
        metrics.underrun_seconds.inc(gap_s)

    return Speaker(
        engine=bridge.engine, voice_id=voice_id, voice=voice, preset=preset,
        send_text=send_text, outbound=OutboundEncoder(start.stream_sid),
        phrase_cache=bridge.phrases, clock=PlayoutClock(settings.lead_ms),
        deadline_scheduling=settings.engine_scheduling == "deadline",
        mark_grace_s=settings.mark_timeout_s,
        hooks=SpeakerHooks(
            on_first_frame=events.on_first_frame,
            on_underrun=on_underrun,
            on_frames_sent=metrics.count_frames_sent,
            on_audio_sent=echo.on_sent if echo is not None else None,
            on_engine_first_chunk=metrics.engine_first_chunk.observe,
            on_finished=events.on_finished,
            on_error=metrics.error,
            on_stalled=events.on_stalled,
        ),
    )
