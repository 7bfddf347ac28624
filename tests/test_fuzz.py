"""Issue 10, "Also": a bounded, seeded fuzz suite over every untrusted surface of a running bridge.

Each test starts one bridge (in a loop thread, reused by every example), opens a healthy reference
call on it, feeds it Hypothesis-generated input (telephony/testing/fuzz_strategies.py) through the probes
of telephony/testing/fuzz_harness.py, and asserts: no 5xx and the one error shape, streams closed only with
policy codes, no traceback logged, and no other call affected: the reference call, poked with a key
every few examples, plays every utterance to its end mark with valid frames.
scripts/fuzz.py runs the same surfaces for long.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from telephony.testing import fuzz_strategies as fs
from telephony.testing.bridge_harness import AUTH_TOKEN, OPERATOR_KEY, running_bridge
from telephony.testing.fuzz_harness import (
    AgentFuzzer,
    LoopThread,
    ReferenceCall,
    StreamFuzzer,
    Target,
    operator_probe,
    speech_probe,
    start_probe,
    start_prototype,
    webhook_probe,
)

pytestmark = pytest.mark.slow  # end-to-end: runs outside the fast tier (pytest -m 'not slow')

FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
POKE_EVERY = 4


class FuzzBridge:
    """One bridge in a loop thread, an HTTP client and the reference call, for a whole test."""

    def __init__(self) -> None:
        self.thread = LoopThread()
        self.stack = contextlib.AsyncExitStack()
        self.examples = 0

    async def _start(self) -> None:
        rb = await self.stack.enter_async_context(running_bridge(start_timeout_s=2.0))
        self.http = await self.stack.enter_async_context(httpx.AsyncClient(timeout=20))
        self.target = Target(rb.base_url, AUTH_TOKEN, OPERATOR_KEY)
        self.reference = await ReferenceCall.open(self.http, self.target)

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.thread.run(coro)

    def example(self, coro) -> str:  # type: ignore[no-untyped-def]
        """Run one probe; poke the reference call every few examples."""
        self.examples += 1
        if self.examples % POKE_EVERY == 0:
            self.run(self.reference.poke())
        return self.run(coro)

    def close(self) -> None:
        async def stop() -> None:
            with contextlib.suppress(Exception):
                await self.reference.close()
            await self.stack.aclose()

        try:
            self.run(stop())
        finally:
            self.thread.close()


@pytest.fixture
def fuzz_bridge(caplog: pytest.LogCaptureFixture) -> Iterator[FuzzBridge]:
    caplog.set_level(logging.INFO)
    bridge = FuzzBridge()
    try:
        bridge.run(bridge._start())
        yield bridge
        summary = bridge.run(bridge.reference.check())  # no other call affected
        logging.getLogger(__name__).info("reference call after %d examples: %s", bridge.examples, summary)
    finally:
        bridge.close()
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert bad == [], [r.getMessage()[:300] for r in bad]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage()[:300] for r in caplog.records if r.levelno >= logging.ERROR]


def test_fuzz_webhook(fuzz_bridge: FuzzBridge) -> None:
    @settings(FUZZ, max_examples=100)
    @given(case=fs.webhook_cases)
    @example(case={"form": fs.VALID_FORM, "query": {"greeting": "Hi\x01there"}, "signed": True, "raw": None})
    @example(case={"form": {**fs.VALID_FORM, "From": "+1\x00"}, "query": {}, "signed": True, "raw": None})
    def run(case: dict) -> None:
        fuzz_bridge.example(webhook_probe(fuzz_bridge.http, fuzz_bridge.target, case))

    run()


def test_fuzz_operator_endpoints(fuzz_bridge: FuzzBridge) -> None:
    @settings(FUZZ, max_examples=60)
    @given(case=fs.operator_cases)
    @example(case={"path": "/preload", "body": b'{"voices": ["\\ud800"]}', "key": "valid"})
    @example(case={"path": "/warmup", "body": b'{"voice": ' + fs.BIG.encode() + b"}", "key": "valid"})
    def run(case: dict) -> None:
        fuzz_bridge.example(operator_probe(fuzz_bridge.http, fuzz_bridge.target, case))

    run()


def test_fuzz_speech_api(fuzz_bridge: FuzzBridge) -> None:
    @settings(FUZZ, max_examples=50)
    @given(body=fs.speech_cases)
    def run(body: bytes) -> None:
        fuzz_bridge.example(speech_probe(fuzz_bridge.http, fuzz_bridge.target, body))

    run()


def test_fuzz_media_stream_messages(fuzz_bridge: FuzzBridge) -> None:
    fuzzer = StreamFuzzer(fuzz_bridge.http, fuzz_bridge.target)

    @settings(FUZZ, max_examples=60)
    @given(messages=st.lists(fs.twilio_messages, min_size=1, max_size=6))
    @example(messages=['{"event": "media", "media": {"payload": "/w==", "chunk": ' + fs.BIG + "}}"])
    def run(messages: list[str | bytes]) -> None:
        fuzz_bridge.example(fuzzer.probe(messages))

    run()
    fuzz_bridge.run(fuzzer.finish())


def test_fuzz_media_stream_start(fuzz_bridge: FuzzBridge) -> None:
    prototype = fuzz_bridge.run(start_prototype(fuzz_bridge.http, fuzz_bridge.target))
    template = fs.start_template("__CALL_SID__", "__STREAM_SID__", prototype)

    @settings(FUZZ, max_examples=40)
    @given(message=fs.mutated_start(template))
    def run(message: str | bytes) -> None:
        fuzz_bridge.example(start_probe(fuzz_bridge.http, fuzz_bridge.target, message))

    run()


def test_fuzz_agent_messages(fuzz_bridge: FuzzBridge) -> None:
    fuzzer = AgentFuzzer(fuzz_bridge.http, fuzz_bridge.target)
    fuzz_bridge.run(fuzzer.start())

    @settings(FUZZ, max_examples=60)
    @given(messages=st.lists(fs.agent_messages, min_size=1, max_size=6))
    @example(messages=['{"type": "play", "source": "http://10.0.0.1/a.wav", "loop": ' + fs.BIG + "}"])
    def run(messages: list[str | bytes]) -> None:
        fuzz_bridge.example(fuzzer.probe(messages))

    run()
    fuzz_bridge.run(fuzzer.finish())
