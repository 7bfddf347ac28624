"""Settings of the speech engine: which one, how many syntheses at once, and each kind's options
(remote OpenAI-compatible servers, the in-process Chatterbox model, the synthetic test engine)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from telephony.settings.urls import v1_urls


class EngineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["piper", "synthetic", "openai", "chatterbox"] = "piper"
    engine_concurrency: int = Field(2, ge=1, le=1024)
    """Syntheses running at once (engine slots; for `openai`, utterances in flight per server)."""
    engine_scheduling: Literal["deadline", "fifo"] = "deadline"
    """Who gets a contended engine slot: the call whose audio runs out first, or first come."""
    engine_url: str | None = None
    """One or more base URLs ending in /v1, comma-separated (a fleet of TTS servers)."""
    engine_model: str = "tts-1"
    engine_api_key: str | None = Field(None, repr=False)
    """Bearer token for the TTS servers (never logged)."""
    engine_sample_rate: int | None = Field(None, ge=8000, le=48000)
    """PCM rate the servers answer; default 24000 (OpenAI's), or a server's X-Sample-Rate header."""
    engine_voices: str | None = None
    """Voice names the servers offer, comma-separated; the first is the default."""
    engine_stream_fields: str = "stream_format,speed"
    """Streaming flags sent in the body, comma-separated from: stream_format, stream, speed."""
    engine_send_preset_params: bool = False
    """Send preset generation keys (exaggeration, cfg_weight, ...) to servers that accept them."""
    engine_first_byte_timeout_s: float = Field(5.0, gt=0, le=120)
    engine_stall_timeout_s: float = Field(5.0, gt=0, le=120)
    engine_backoff_s: float = Field(5.0, gt=0, le=600)
    """A failing server is skipped for this long, then probed again."""
    checkpoint_dir: Path | None = None
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    engine_replicas: int = Field(1, ge=1, le=16)
    """Model copies per device (each serves one synthesis at a time)."""
    synthetic_first_chunk_ms: float = Field(0.0, ge=0, le=10_000)
    synthetic_realtime_factor: float = Field(0.0, ge=0, le=10)
    """Seconds of wall time per second of audio (0: instant). Benchmarks and tests set these to make
    a loopback bridge behave like a remote GPU server that streams at its own pace."""

    @field_validator("engine_url")
    @classmethod
    def _engine_urls(cls, value: str | None) -> str | None:
        return v1_urls(value)

    @field_validator("engine_stream_fields")
    @classmethod
    def _stream_fields(cls, value: str) -> str:
        fields = [f.strip() for f in value.split(",") if f.strip()]
        unknown = set(fields) - {"stream_format", "stream", "speed"}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; known: stream_format, stream, speed")
        return ",".join(fields)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _engine_complete(self) -> EngineSettings:
        if self.engine == "openai" and not self.engine_url:
            raise ValueError("VOICE_BRIDGE_ENGINE=openai needs VOICE_BRIDGE_ENGINE_URL "
                             "(e.g. http://gpu1:8000/v1,http://gpu2:8000/v1)")
        if self.engine == "chatterbox" and self.checkpoint_dir is None:
            raise ValueError("VOICE_BRIDGE_ENGINE=chatterbox needs VOICE_BRIDGE_CHECKPOINT_DIR "
                             "(a local Chatterbox checkpoint directory; nothing downloads at run time)")
        if self.checkpoint_dir is not None and not self.checkpoint_dir.is_dir():
            raise ValueError(f"checkpoint_dir {self.checkpoint_dir} is not a directory")
        return self

    def engine_urls(self) -> list[str]:
        return self.engine_url.split(",") if self.engine_url else []

    def engine_voice_names(self) -> list[str]:
        return [v.strip() for v in (self.engine_voices or "").split(",") if v.strip()]
