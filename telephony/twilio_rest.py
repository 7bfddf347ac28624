"""Hanging up the phone call itself, through Twilio's REST API.

Closing the media stream does not end a call: Twilio goes on with the next TwiML verb. Ending it
takes ``calls(sid).update(status="completed")`` with the account's credentials. The official
``twilio`` client is synchronous (``requests``), so every request runs on a small thread pool of
its own, never on the event loop, under a timeout.

Outcomes: 2xx is hung up; 404 / Twilio error 20404 (the call is gone) and 21220 (the call is no
longer in progress) mean the call had already ended, which is what was wanted. 5xx, 429, timeouts
and refused connections are retried after growing pauses, a bounded number of times; any other
error (401 bad credentials, 400) would fail the same way again, so it is not retried. Whatever
the outcome, the caller closes the media stream afterwards: at worst the call goes on with the
next TwiML verb, which is what a stream close did before hang-ups existed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twilio.base.exceptions import TwilioRestException

from telephony.config import Settings

if TYPE_CHECKING:
    from twilio.rest import Client

log = logging.getLogger("voice_bridge.twilio_rest")

REQUEST_TIMEOUT_S = 5.0
"""One REST request (connect, then read); Twilio answers a call update in well under a second."""
BACKOFF_S = (0.5, 1.0, 2.0)
"""Pauses before each retry: at most 1 + 3 requests, about 3.5 s of pauses plus the requests."""
POOL_THREADS = 4
"""Hang-ups in flight at once per process (each holds one thread for at most its timeout)."""
ALREADY_ENDED_CODES = frozenset({20404, 21220})
"""20404: the call resource is not found; 21220: the call is not in progress any more."""
CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")


class HangupOutcome(enum.Enum):
    HUNG_UP = "hung_up"
    ALREADY_ENDED = "already_ended"
    FAILED = "failed"


@dataclass(frozen=True)
class HangupResult:
    outcome: HangupOutcome
    attempts: int
    error: str | None = None
    """Why it failed (the last attempt's error), for logs and the agent; never a credential."""

    @property
    def ok(self) -> bool:
        """The call is over (hung up now, or it had already ended)."""
        return self.outcome is not HangupOutcome.FAILED


class TwilioCalls:
    """Ends calls through the REST API; one per process, shared by every call."""

    def __init__(self, client: Client, *, timeout_s: float = REQUEST_TIMEOUT_S,
                 backoff_s: tuple[float, ...] = BACKOFF_S, threads: int = POOL_THREADS,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="twilio-rest")

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> TwilioCalls | None:
        """The REST client for the configured account, or None without TWILIO_ACCOUNT_SID."""
        sid = settings.twilio_account_sid
        if not sid:
            return None
        timeout_s = options.get("timeout_s", REQUEST_TIMEOUT_S)
        return cls(make_client(settings, timeout_s=timeout_s), **options)

    async def hang_up(self, call_sid: str) -> HangupResult:
        """End the call ``call_sid``; never raises (except when cancelled)."""
        if not CALL_SID.fullmatch(call_sid):
            error = f"{call_sid[:40]!r} is not a Twilio CallSid (CA + 32 hex digits)"
            log.warning("hang-up refused: %s", error)
            return HangupResult(HangupOutcome.FAILED, 0, error)
        attempts = 0
        error = ""
        for pause in (None, *self.backoff_s):
            if pause is not None:
                await self._sleep(pause)
            attempts += 1
            try:
                async with asyncio.timeout(self.timeout_s * 2 + 1):  # connect + read, plus a queue
                    await asyncio.get_running_loop().run_in_executor(
                        self._pool, self._complete, call_sid)
            except TwilioRestException as exc:
                if exc.status == 404 or exc.code in ALREADY_ENDED_CODES:
                    log.info("call %s had already ended (HTTP %s, Twilio error %s)", call_sid,
                             exc.status, exc.code)
                    return HangupResult(HangupOutcome.ALREADY_ENDED, attempts)
                code = f", Twilio error {exc.code}" if exc.code else ""
                error = f"HTTP {exc.status}{code}: {_message(exc)}"
                if not (exc.status >= 500 or exc.status == 429):
                    log.error("hang-up of call %s refused, not retried: %s", call_sid, error)
                    return HangupResult(HangupOutcome.FAILED, attempts, error)
            except OSError as exc:  # requests' errors are OSErrors; so is asyncio's TimeoutError
                error = _describe(exc)
            except Exception as exc:  # a bug or a client-side refusal: trying again would repeat it
                log.exception("hang-up of call %s failed", call_sid)
                return HangupResult(HangupOutcome.FAILED, attempts, _describe(exc))
            else:
                log.info("call %s hung up through the REST API (attempt %d)", call_sid, attempts)
                return HangupResult(HangupOutcome.HUNG_UP, attempts)
            log.warning("hang-up of call %s, attempt %d failed: %s", call_sid, attempts, error)
        log.error("hang-up of call %s failed after %d attempts: %s", call_sid, attempts, error)
        return HangupResult(HangupOutcome.FAILED, attempts, error)

    def _complete(self, call_sid: str) -> None:
        """Runs on the pool: the blocking request."""
        self.client.api.v2010.account.calls(call_sid).update(status="completed")

    def close(self) -> None:
        """Stop the pool; a request still running finishes within its timeout."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def make_client(settings: Settings, *, timeout_s: float = REQUEST_TIMEOUT_S) -> Client:
    """The ``twilio`` client for the configured account (API key pair if set, else the auth token),
    sending to ``twilio_api_base_url``. Imported here: only a bridge with an account pays for it."""
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    if settings.twilio_api_key:
        username, password = settings.twilio_api_key, settings.twilio_api_secret
    else:
        username, password = settings.twilio_account_sid, settings.twilio_auth_token
    client = Client(username, password, account_sid=settings.twilio_account_sid,
                    http_client=TwilioHttpClient(timeout=timeout_s, pool_connections=True))
    client.api.base_url = settings.twilio_api_base_url
    return client


def _message(exc: TwilioRestException) -> str:
    return " ".join(str(exc.msg).split())[:200]


def _describe(exc: BaseException) -> str:
    import requests  # loaded with the client by now

    if isinstance(exc, TimeoutError | requests.Timeout):
        return f"no answer within the timeout ({type(exc).__name__})"
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["HangupOutcome", "HangupResult", "TwilioCalls", "make_client"]
