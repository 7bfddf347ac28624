"""A production-mode bridge process on loopback (soak, attack bench, long fuzzing), a Twilio-signed
call against it, and the process's RSS and fd count.

Production mode means TWILIO_AUTH_TOKEN and PUBLIC_URL are set: webhooks must be signed and every
stream must present the webhook's token, as in a real deployment.
"""

from __future__ import annotations

import contextlib
import os
import resource
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
from twilio.request_validator import RequestValidator

from telephony.testing.bridge_process import BridgeProcess, bridge_process, free_port
from telephony.testing.twilio_emulator import TwilioEmulator

AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
OPERATOR_KEY = "bench-operator-key-0123456789"


def raise_fd_limit() -> int:
    """Raise this process's soft fd limit to its hard limit (1,000 idle connections need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.asynccontextmanager
async def production_bridge(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[BridgeProcess]:
    """``voice-bridge serve --engine synthetic`` with an auth token, PUBLIC_URL and an operator key."""
    port = free_port()
    base_env = {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_URL": f"http://127.0.0.1:{port}",
                "VOICE_BRIDGE_API_KEY": OPERATOR_KEY, "VOICE_BRIDGE_ENGINE": "synthetic",
                "VOICE_BRIDGE_STT": "off", "VOICE_BRIDGE_AGENT_ALLOW_HOSTS": "127.0.0.1"}
    async with bridge_process(*args, env={**base_env, **(env or {})}, port=port) as bridge:
        yield bridge


def sign(url: str, params: dict[str, str]) -> str:
    return RequestValidator(AUTH_TOKEN).compute_signature(url, params)


async def signed_webhook(http: httpx.AsyncClient, base_url: str, call_sid: str,
                         query: dict[str, str] | None = None) -> httpx.Response:
    """POST /twiml as Twilio would, signed over PUBLIC_URL + path + query."""
    params = {"CallSid": call_sid, "AccountSid": "AC1", "From": "+15550001111", "To": "+15550002222",
              "Direction": "inbound"}
    url = f"{base_url}/twiml" + (f"?{urlencode(query)}" if query else "")
    return await http.post(url, data=params, headers={"X-Twilio-Signature": sign(url, params)})


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    """The stream URL and parameters (token included) of a webhook's TwiML."""
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    return stream.attrib["url"], {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}


async def signed_call(http: httpx.AsyncClient, base_url: str, call_sid: str,
                      query: dict[str, str] | None = None, *, keep_audio: bool = False) -> TwilioEmulator:
    """Webhook, then the Media Stream it names, with its token: a call as Twilio places it."""
    response = await signed_webhook(http, base_url, call_sid, query)
    response.raise_for_status()
    url, params = stream_of(response.text)
    call = TwilioEmulator(url, call_sid=call_sid, stream_sid="MZ" + call_sid[2:],
                          custom_parameters=params, keep_audio=keep_audio)
    await call.connect()
    return call


def proc_sample(pid: int) -> tuple[float, int]:
    """(RSS in MB, open fds) of a process, from /proc."""
    rss_kb = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))
