"""Server settings from the environment (``VOICE_BRIDGE_*`` and Twilio's usual names) and CLI flags.

Validated once at start: a bad value stops the server with a message naming the setting, instead of
failing on the first live call. ``Settings`` is composed of one group per concern (telephony/settings/:
Twilio and access, engine, hearing, agent, limits); the server's own fields, voices and presets are
here. The presets file is loaded once, by this validation, and kept (``preset_book``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from telephony.settings.agent import AgentSettings
from telephony.settings.engine import EngineSettings
from telephony.settings.hearing import HearingSettings
from telephony.settings.limits import LimitSettings
from telephony.settings.twilio import TwilioSettings
from telephony.settings.urls import http_base_url
from tts_core.errors import ConfigurationError
from tts_core.presets import DEFAULT_PRESETS_PATH, PresetBook, PresetError, load_presets


class ConfigError(ConfigurationError, ValueError):
    """The configuration cannot work; the message says which setting and why."""

    kind = "invalid_configuration"


class Settings(LimitSettings, AgentSettings, HearingSettings, EngineSettings, TwilioSettings):
    """Every setting; the groups' checks run first (Twilio's, then the engine's, ...), then these."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _presets: PresetBook | None = PrivateAttr(default=None)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    stream_port: int | None = Field(None, ge=0, le=65535)
    """When set, ``/media-stream`` is also served on this port by the lean picows listener
    (telephony/twilio/picows_socket.py); the webhook points Twilio there unless PUBLIC_URL is set (then
    the operator's proxy routes the path ``/media-stream`` to this port)."""
    default_voice: str | None = None
    default_preset: str = "balanced"
    presets_path: Path = DEFAULT_PRESETS_PATH
    voices_dir: Path | None = None
    voice_server_url: str | None = None
    voice_cache_size: int = Field(32, ge=1, le=10_000)
    phrase_cache_mb: int = Field(64, ge=0, le=8192)
    voice_disk_cache_mb: int = Field(512, ge=1, le=1_000_000)
    """Disk cache of voices fetched from the voice server; least recently used evicted past it."""
    record_dir: Path | None = None
    """When set, every call is written there as a recorded-call JSONL file (contains caller audio)."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("voice_server_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return http_base_url(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _voices_and_presets(self) -> Settings:
        if self.voices_dir is not None and not self.voices_dir.is_dir():
            raise ValueError(f"voices_dir {self.voices_dir} is not a directory")
        try:
            book = load_presets(self.presets_path)
            book.get(self.default_preset)
        except PresetError as exc:
            raise ValueError(
                f"presets ({self.presets_path}, default {self.default_preset!r}): {exc}") from None
        self._presets = book
        return self

    def preset_book(self) -> PresetBook:
        """The presets, as loaded when these settings were validated (the file is read once)."""
        if self._presets is None:  # built without validation (model_construct)
            self._presets = load_presets(self.presets_path)
        return self._presets

    def stream_public_base(self) -> str:
        return self.public_url or f"http://{self.host}:{self.stream_port or self.port}"


# Environment variable -> setting. Twilio's conventional names are accepted as they are.
ENV_NAMES = {
    "TWILIO_AUTH_TOKEN": "twilio_auth_token",
    "PUBLIC_URL": "public_url",
    "TWILIO_ACCOUNT_SID": "twilio_account_sid",
    "TWILIO_API_KEY": "twilio_api_key",
    "TWILIO_API_SECRET": "twilio_api_secret",
}
ENV_PREFIX = "VOICE_BRIDGE_"


def settings_from_env(env: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from ``env`` (default: os.environ) plus explicit overrides (CLI flags)."""
    env = dict(os.environ if env is None else env)
    values: dict[str, object] = {}
    for name, field_name in ENV_NAMES.items():
        if env.get(name):
            values[field_name] = env[name]
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX):].lower()
            if key not in Settings.model_fields:
                raise ConfigError(f"{name}: unknown setting (known: "
                                  f"{', '.join(ENV_PREFIX + k.upper() for k in Settings.model_fields)})")
            if value == "" and key != "default_greeting":
                continue  # set but empty means unset (VOICE_BRIDGE_RECORD_DIR= must not record to "."),
                # except the greeting, where empty means none
            values[key] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
