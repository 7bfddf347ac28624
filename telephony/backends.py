"""The bridge's two back ends, built from the settings and loaded at start: the speech engine and
the speech recogniser.

A back end that cannot load (missing weights, a model that does not exist, a missing extra) is a
configuration problem: it stops the server at start with a ``ConfigError`` naming the setting.
"""

from __future__ import annotations

from typing import Any

from telephony.config import ConfigError, Settings
from tts_core.engines import Engine, EngineError, create_engine
from tts_core.stt import Recogniser, RecogniserError, create_recogniser

REMOTE_CONNECTIONS_PER_SERVER = 64


def build_engine(settings: Settings) -> Engine:
    """The configured engine, with the settings each kind of engine takes."""
    options: dict[str, Any] = {}
    if settings.engine == "piper":
        options = {"max_concurrency": settings.engine_concurrency}
    elif settings.engine == "openai":
        options = {
            "urls": settings.engine_urls(), "model": settings.engine_model,
            "api_key": settings.engine_api_key, "sample_rate": settings.engine_sample_rate,
            "voices": settings.engine_voice_names(),
            "stream_fields": settings.engine_stream_fields.split(",")
            if settings.engine_stream_fields else [],
            "send_preset_params": settings.engine_send_preset_params,
            "first_byte_timeout_s": settings.engine_first_byte_timeout_s,
            "stall_timeout_s": settings.engine_stall_timeout_s,
            "backoff_s": settings.engine_backoff_s,
            # Connections per server: GPU servers batch many streams, so the default is generous.
            "max_in_flight_per_server": settings.engine_concurrency
            if "engine_concurrency" in settings.model_fields_set else REMOTE_CONNECTIONS_PER_SERVER,
        }
    elif settings.engine == "synthetic":
        options = {"first_chunk_delay_s": settings.synthetic_first_chunk_ms / 1000,
                   "realtime_factor": settings.synthetic_realtime_factor}
    elif settings.engine == "chatterbox":
        options = {"checkpoint_dir": settings.checkpoint_dir, "device": settings.device,
                   "replicas": settings.engine_replicas}
        if settings.voices_dir is not None:  # prepared voices cached beside the voices themselves
            options["conds_dir"] = settings.voices_dir / ".chatterbox-conds"
    return create_engine(settings.engine, **options)


def build_recogniser(settings: Settings) -> Recogniser | None:
    """The configured speech recogniser (None with VOICE_BRIDGE_STT=off); not loaded yet."""
    if settings.stt == "off":
        return None
    if settings.stt == "local":
        return create_recogniser("local", model=settings.stt_model,
                                 concurrency=settings.stt_concurrency)
    return create_recogniser(
        "openai", urls=settings.stt_urls(), model=settings.stt_model, api_key=settings.stt_api_key,
        upload_rate=settings.stt_upload_rate, timeout_s=settings.stt_timeout_s,
        backoff_s=settings.stt_backoff_s,
        max_in_flight_per_server=settings.stt_concurrency or REMOTE_CONNECTIONS_PER_SERVER)


async def start_recogniser(settings: Settings, given: Recogniser | None) -> Recogniser | None:
    """``given`` (a test's shared model, left as it is), or the configured recogniser, loaded."""
    if settings.stt == "off":
        return None
    if given is not None:
        return given
    try:
        recogniser = build_recogniser(settings)
        if recogniser is not None:
            await recogniser.load()
    except RecogniserError as exc:
        raise ConfigError(f"VOICE_BRIDGE_STT={settings.stt}: {exc}") from None
    return recogniser


async def start_engine(settings: Settings, given: Engine | None,
                       close_on_failure: Recogniser | None) -> Engine:
    """``given`` or the configured engine, loaded; on failure ``close_on_failure`` (the recogniser
    loaded just before) is closed, so nothing is left open."""
    engine = given if given is not None else build_engine(settings)
    try:
        await engine.load()
    except BaseException as exc:
        if close_on_failure is not None:
            await close_on_failure.aclose()
        if isinstance(exc, EngineError):  # missing weights / extra / device: a configuration problem
            raise ConfigError(f"VOICE_BRIDGE_ENGINE={settings.engine}: {exc}") from exc
        raise
    return engine
