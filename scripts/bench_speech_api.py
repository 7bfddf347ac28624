"""What ``POST /v1/audio/speech`` adds to the engine's own latency, on the real server over loopback.

For each request: the moment the engine yields its first chunk (a spy around the engine, same
process, same clock) and the moment the client has the first audio byte. The difference is the
bridge's cost (encoding, resampling, HTTP framing, loopback), which a remote-engine client adds to
the server's first byte. Sequential requests, one short sentence each.

    PYTHONPATH=. python scripts/bench_speech_api.py --engine synthetic -n 50
    PYTHONPATH=. python scripts/bench_speech_api.py --engine piper -n 30
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import httpx
import numpy as np

from telephony.testing.bridge_harness import running_bridge
from tts_core.engines import Engine, SpeechRequest
from tts_core.engines.piper import PiperEngine
from tts_core.engines.synthetic import SyntheticEngine

KEY = "bench-key"
TEXT = "Thanks for calling, how can I help you today?"


def spying(engine_class: type[Engine]) -> Engine:
    """An engine of ``engine_class`` that records when each utterance's first chunk leaves it."""

    class Spy(engine_class):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.first_chunk_at: list[float] = []

        async def _stream(self, request: SpeechRequest) -> AsyncIterator[np.ndarray]:
            first = True
            async for chunk in super()._stream(request):
                if first:
                    self.first_chunk_at.append(time.perf_counter())
                    first = False
                yield chunk

    return Spy()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("synthetic", "piper"), default="synthetic")
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--format", default="pcm", choices=("pcm", "wav", "mulaw"))
    args = parser.parse_args()
    engine = spying(PiperEngine if args.engine == "piper" else SyntheticEngine)
    ttfb, overhead = [], []
    async with running_bridge(engine, api_key=KEY) as rb, httpx.AsyncClient(
        base_url=rb.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ) as http:
        for i in range(args.n + 2):  # the first two warm the engine and the connection
            started = time.perf_counter()
            async with http.stream("POST", "/v1/audio/speech", json={
                "model": "tts-1", "input": TEXT, "response_format": args.format,
            }) as response:
                response.raise_for_status()
                chunks = response.aiter_raw()
                await anext(chunks)
                first_byte = time.perf_counter()
                async for _ in chunks:
                    pass
            if i >= 2:
                ttfb.append((first_byte - started) * 1000)
                overhead.append((first_byte - engine.first_chunk_at[-1]) * 1000)  # type: ignore[attr-defined]
    print(f"engine={args.engine} ({engine.sample_rate} Hz) format={args.format} n={args.n}")
    print(f"request -> first byte      p50 {pct(ttfb, 50):7.2f} ms  p95 {pct(ttfb, 95):7.2f} ms")
    print(f"engine chunk -> first byte p50 {pct(overhead, 50):7.2f} ms  p95 {pct(overhead, 95):7.2f} ms"
          f"  (mean {statistics.mean(overhead):.2f})")


if __name__ == "__main__":
    asyncio.run(main())
