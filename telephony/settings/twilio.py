"""Settings of the Twilio side and of who may use the bridge: auth token, public URL, REST
credentials, the operator API key, and where calls' agents may connect (egress)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from telephony.settings.urls import http_base_url


class TwilioSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    public_url: str | None = None
    """Externally visible base URL (https://...). Builds the stream's wss:// URL and is the URL
    signatures are checked against (never the Host header, which a proxy rewrites)."""
    twilio_auth_token: str | None = None
    insecure_dev: bool = False
    """Run without a Twilio auth token (local development only): no signature checks."""
    require_stream_signature: bool = False
    """Refuse Media Streams handshakes without X-Twilio-Signature (instead of the webhook token)."""
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
    api_key: str | None = Field(None, repr=False)
    """Bearer key for the OpenAI-compatible /v1 endpoints served by the bridge."""
    agent_allow_hosts: str | None = None
    """Host names an agentUrl or a play URL may name even though they resolve to loopback/private
    addresses, comma-separated (see telephony/egress.py)."""
    agent_allow_nets: str | None = None
    """CIDRs whose addresses agents and play downloads may reach, comma-separated, e.g. 10.0.0.0/8."""

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return http_base_url(value)

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

    @field_validator("agent_allow_nets")
    @classmethod
    def _allow_nets(cls, value: str | None) -> str | None:
        from telephony.egress import parse_nets

        try:
            parse_nets(value)
        except ValueError as exc:
            raise ValueError(f"must be comma-separated CIDRs or addresses: {exc}") from None
        return value

    @model_validator(mode="after")
    def _auth_required(self) -> TwilioSettings:
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
        return self

    @property
    def insecure(self) -> bool:
        return not self.twilio_auth_token
