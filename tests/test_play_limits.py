"""Issue 10, finding 7: a hostile agent's ``play``.

Three plays of a 5 MB file with loop=10 took a process from 318 to 963 MB (each loop a copy) and
starved a neighbouring call; a redirect to loopback was followed; error texts told the agent what
it found inside. Now: decoded audio is budgeted per call, loops replay one buffer, every redirect
hop is checked, and errors name a category only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from telephony.testing.asgi_server import serve_asgi
from telephony.testing.bridge_harness import running_bridge
from tests.conftest import eventually, wav_bytes
from tests.test_call_e2e import open_call
from tests.test_relay_e2e import agent_app

pytestmark = pytest.mark.slow  # end-to-end: runs outside the fast tier (pytest -m 'not slow')

FIVE_MB_SAMPLES = 2_500_000
"""16-bit mono at 8 kHz: a 5,000,044-byte WAV (just under the 5 MiB download cap), 312 s of audio,
10,000,000 bytes decoded (float32)."""
DECODED = FIVE_MB_SAMPLES * 4


@pytest.fixture
async def media() -> AsyncIterator[tuple[str, list[str]]]:
    big = wav_bytes(np.full(FIVE_MB_SAMPLES, 0.1, dtype=np.float32), 8000)
    short = wav_bytes(np.full(4000, 0.3, dtype=np.float32), 8000)  # 0.5 s
    hits: list[str] = []

    async def serve_big(request: Request) -> Response:
        hits.append(request.url.path)
        return Response(big, media_type="audio/wav")

    async def serve_short(request: Request) -> Response:
        hits.append(request.url.path)
        return Response(short, media_type="audio/wav")

    async def to_loopback(request: Request) -> Response:
        hits.append(request.url.path)
        return RedirectResponse(f"http://localhost:{request.url.port}/internal.wav", status_code=302)

    app = Starlette(routes=[Route("/big.wav", serve_big), Route("/short.wav", serve_short),
                            Route("/internal.wav", serve_short), Route("/moved", to_loopback)])
    async with serve_asgi(app) as base:
        yield base, hits


def errors(agent) -> list[str]:  # type: ignore[no-untyped-def]
    return [m["description"] for m in agent.of_type("error")]


async def test_three_plays_of_5mb_with_loop_10_stay_within_the_call_budget(media) -> None:  # type: ignore[no-untyped-def]
    base, _ = media
    cap_mb = 25  # room for two decoded files, not three (and nowhere near 3 x 10 loops)
    async with agent_app() as agent, running_bridge(play_max_decoded_mb=cap_mb) as rb, \
            httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA71", f"?greeting=&agentUrl={agent.url}")
        await eventually(lambda: agent.of_type("setup"))
        session = next(iter(rb.bridge.calls.values()))
        budget = session.agent.play_budget
        for _ in range(3):
            await agent.send(type="play", source=f"{base}/big.wav", loop=10)
        await eventually(lambda: errors(agent), timeout=20, what="the third play refused")
        assert budget.held_bytes == 2 * DECODED, budget.held_bytes  # one buffer per play, loops free
        assert budget.peak_bytes <= cap_mb * 1024 * 1024
        assert "budget" in errors(agent)[0] and "big.wav" in errors(agent)[0]
        # the playing clip is one decoded file played 10 times, not a 10x copy
        def clips() -> list:  # type: ignore[type-arg]
            return [u.source for u in [*session.speaker.queue.active, *session.speaker.queue.pending]]

        await eventually(lambda: len(clips()) == 2, timeout=10, what="two clips queued")
        for clip in clips():
            assert clip.audio.nbytes == DECODED and clip.loops == 10
        await call.hang_up()
        await eventually(lambda: budget.held_bytes == 0, timeout=10, what="budget given back at hang-up")


async def test_a_loop_plays_the_clip_that_many_times(media) -> None:  # type: ignore[no-untyped-def]
    base, _ = media
    async with agent_app() as agent, running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA72", f"?greeting=&agentUrl={agent.url}")
        await eventually(lambda: agent.of_type("setup"))
        await agent.send(type="play", source=f"{base}/short.wav", loop=3)
        assert await call.wait_for(lambda: call.played_utterances(), timeout=10)
        frames = call.played_utterances()[0].frames
        assert 74 <= frames <= 76, frames  # 3 x 0.5 s of 20 ms frames
        await call.hang_up()


async def test_a_play_redirected_to_loopback_is_refused_with_a_generic_error(media) -> None:  # type: ignore[no-untyped-def]
    base, hits = media
    async with agent_app() as agent, running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA73", f"?greeting=&agentUrl={agent.url}")
        await eventually(lambda: agent.of_type("setup"))
        await agent.send(type="play", source=f"{base}/moved")
        await eventually(lambda: errors(agent), timeout=10)
        text = errors(agent)[0]
        assert text == f"play {base}/moved: play source refused: address not allowed", text
        assert "localhost" not in text and "internal" not in text
        assert "/internal.wav" not in hits, "the redirect target must never be requested"
        await asyncio.sleep(0)
        await call.hang_up()
