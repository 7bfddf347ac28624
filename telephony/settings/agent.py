"""Settings of the agent a call talks to: the default agent, its greeting, ``play`` clips, and the
built-in LLM agent's chat server."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from telephony.settings.urls import url_host

DEFAULT_LLM_SYSTEM_PROMPT = (
    "You are a helpful voice assistant on a phone call. Everything you write is spoken aloud by a "
    "text-to-speech voice, so answer in one to three short, natural spoken sentences. Never use "
    "markdown, lists, headings, emoji, URLs or code; spell out numbers and symbols as words when "
    "that reads better aloud. If you did not understand the caller, ask them to repeat. Keep the "
    "conversation moving with a short question when it helps."
)


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_agent: str = "demo"
    """'demo', 'openai-chat' (the built-in LLM agent), a ws(s):// ConversationRelay agent URL, or
    'python:module:attr' (an Agent factory)."""
    play_max_decoded_mb: float = Field(32.0, gt=0, le=4096)
    """Decoded audio one call's ``play`` clips may hold at once (float32 samples); a play past it is
    refused. A loop plays the same buffer again and costs nothing more."""
    default_greeting: str = ("Hello! You are talking to voice bridge. Say something, or press a key, and I "
                             "will answer.")
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

    @field_validator("default_agent")
    @classmethod
    def _agent_spec(cls, value: str) -> str:
        if value.startswith(("ws://", "wss://")):
            if not url_host(value):
                raise ValueError(f"{value!r} must name a host, e.g. wss://agent.example.com/relay")
            return value
        if value in ("demo", "openai-chat") or value.startswith("python:"):
            return value
        raise ValueError("must be 'demo', 'openai-chat', a ws:// or wss:// URL, or 'python:module:attr'")

    @model_validator(mode="after")
    def _agent_complete(self) -> AgentSettings:
        if self.default_agent == "openai-chat" and not self.llm_url:
            raise ValueError("VOICE_BRIDGE_DEFAULT_AGENT=openai-chat needs VOICE_BRIDGE_LLM_URL, the "
                             "chat server's OpenAI API base (e.g. http://localhost:8000/v1 for vLLM, "
                             "http://localhost:11434/v1 for Ollama)")
        return self
