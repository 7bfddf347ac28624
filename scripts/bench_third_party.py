#!/usr/bin/env python3
"""Drive the remote engine (``OpenAIRemoteEngine``) against a real third-party OpenAI-compatible TTS
server, and report how that server streams.

For each utterance the same text is sent twice, back to back (the order alternates so a server-side
cache favours neither): once through our engine and once as a plain ``httpx`` stream of the same
request body. The table puts the engine's first-audio latency next to the server's own first body
byte, so the engine's overhead is the difference. Then a quirks report: headers, announced rate,
chunk sizes, how the server answers a bad voice / empty input / unknown field / each streaming
field, and what happens when the client walks away mid-utterance (cancel).

Run it from the repository root, e.g.::

    PYTHONPATH=. .venv/bin/python scripts/bench_third_party.py \
        --url http://127.0.0.1:7878/v1 --voice alloy --utterances 5

``--start "<command>"`` starts the server first (in its own process group, killed at the end;
readiness is bounded by ``--start-timeout``). Only loopback URLs are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from tts_core.engines import EngineError, SpeechRequest
from tts_core.engines.openai_remote import OPENAI_PCM_RATE, OpenAIRemoteEngine
from tts_core.presets import load_presets

TEXTS = [
    "Thanks for calling. How can I help you today?",
    "Sure, I can help with that. Your order shipped this morning and should arrive on Thursday.",
    "Of course. The store opens at nine and closes at six, Monday through Saturday.",
    "Got it, one moment please. I have moved your appointment to Tuesday at half past two.",
    "Absolutely. Your balance is forty two dollars and ten cents, due on the first of the month.",
    "I'm sorry, I didn't catch that. Could you say the account number again, slowly?",
]
LONG_TEXT = " ".join(TEXTS * 3)
BAD_VOICE = "no-such-voice-7f3a"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# ---- measurements -------------------------------------------------------------------------------
@dataclass
class RawResult:
    """One request sent as a plain httpx stream: what the server itself does."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    headers_s: float | None = None
    first_byte_s: float | None = None
    total_s: float | None = None
    chunk_sizes: list[int] = field(default_factory=list)
    body_prefix: bytes = b""
    error: str | None = None

    @property
    def nbytes(self) -> int:
        return sum(self.chunk_sizes)

    def rate(self) -> tuple[int, str]:
        """(sample rate, where it came from): X-Sample-Rate, a WAV header, or OpenAI's 24 kHz."""
        announced = self.headers.get("x-sample-rate", "").strip()
        if announced.isdigit():
            return int(announced), "X-Sample-Rate header"
        if self.body_prefix[:4] == b"RIFF" and len(self.body_prefix) >= 28:
            return struct.unpack("<I", self.body_prefix[24:28])[0], "WAV header"
        return OPENAI_PCM_RATE, "not announced (OpenAI's 24 kHz assumed)"

    def audio_s(self) -> float:
        header = 44 if self.body_prefix[:4] == b"RIFF" else 0
        return max(0, self.nbytes - header) / 2 / self.rate()[0]


@dataclass
class EngineResult:
    first_audio_s: float | None = None
    total_s: float | None = None
    audio_s: float = 0.0
    rms: float = 0.0
    error: str | None = None


async def raw_request(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                      timeout_s: float) -> RawResult:
    result = RawResult()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", f"{url}/audio/speech", json=body) as response:
                result.headers_s = time.perf_counter() - started
                result.status = response.status_code
                result.headers = {k.lower(): v for k, v in response.headers.items()}
                async for data in response.aiter_raw():
                    if result.first_byte_s is None:
                        result.first_byte_s = time.perf_counter() - started
                    if len(result.body_prefix) < 4096:
                        result.body_prefix += data[: 4096 - len(result.body_prefix)]
                    result.chunk_sizes.append(len(data))
        result.total_s = time.perf_counter() - started
    except (TimeoutError, httpx.HTTPError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def engine_utterance(engine: OpenAIRemoteEngine, request: SpeechRequest) -> EngineResult:
    result = EngineResult()
    chunks: list[np.ndarray] = []
    started = time.perf_counter()
    try:
        async with aclosing(engine.stream(request)) as stream:
            async for chunk in stream:
                if result.first_audio_s is None:
                    result.first_audio_s = time.perf_counter() - started
                chunks.append(chunk)
        result.total_s = time.perf_counter() - started
    except EngineError as exc:
        result.error = str(exc)
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    result.audio_s = audio.size / engine.sample_rate
    result.rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
    return result


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process and its children so far (Linux /proc), or None."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def cpu_after(pid: int) -> dict[str, float]:
    """Server CPU seconds 0.5-2.5 s and 2.5-5.5 s after a hang-up: a server that finishes the
    piece it is rendering shows CPU in the first window only; one that renders on for nobody, in
    both."""
    report: dict[str, float] = {}
    await asyncio.sleep(0.5)
    marks = [cpu_seconds(pid)]
    for window in (2.0, 3.0):
        await asyncio.sleep(window)
        marks.append(cpu_seconds(pid))
    known = [m for m in marks if m is not None]
    if len(known) == 3:
        report["cpu_0.5-2.5s"] = round(known[1] - known[0], 2)
        report["cpu_2.5-5.5s"] = round(known[2] - known[1], 2)
    return report


async def cancel_probe(engine: OpenAIRemoteEngine, preset: Any, voice: str,
                       server_pid: int | None) -> dict[str, Any]:
    """Start a long utterance, walk away after its first chunk, and see what the server does."""
    report: dict[str, Any] = {}
    request = SpeechRequest(LONG_TEXT, voice, preset)
    started = time.perf_counter()
    stream = engine.stream(request)
    try:
        await anext(stream)
        report["first_audio_s"] = round(time.perf_counter() - started, 3)
    except (EngineError, StopAsyncIteration) as exc:
        report["error"] = f"no first chunk: {exc}"
        await stream.aclose()
        return report
    if server_pid is not None:
        before = cpu_seconds(server_pid)
        await asyncio.sleep(1.0)
        during = cpu_seconds(server_pid)
        if before is not None and during is not None:
            report["server_cpu_while_streaming"] = round(during - before, 2)
    closing = time.perf_counter()
    await stream.aclose()
    report["close_s"] = round(time.perf_counter() - closing, 4)
    report["in_flight_after_close"] = engine.busy_slots
    if server_pid is not None:
        report["server_after_close"] = await cpu_after(server_pid)
    follow = await engine_utterance(engine, SpeechRequest(TEXTS[0], voice, preset))
    report["next_first_audio_s"] = _r(follow.first_audio_s)
    report["next_error"] = follow.error
    return report


async def early_disconnect_probe(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                                 server_pid: int | None) -> dict[str, Any]:
    """Hang up 1 s into a long request, before its first byte in most servers (what our first-byte
    timeout or a barge-in does), and see whether the server keeps rendering for nobody."""
    if server_pid is None:
        return {"skipped": "no --start or --server-pid: cannot watch the server's CPU"}
    task = asyncio.create_task(raw_request(client, url, {**body, "input": LONG_TEXT}, 300.0))
    await asyncio.sleep(1.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    report: dict[str, Any] = {"server_after_hangup": await cpu_after(server_pid)}
    started = time.perf_counter()
    follow = await raw_request(client, url, body, 300.0)
    report["next_first_byte_s"] = _r(follow.first_byte_s)
    report["next_wait_s"] = round(time.perf_counter() - started, 3)
    return report


async def field_probes(client: httpx.AsyncClient, url: str, base: dict[str, Any],
                       timeout_s: float) -> list[tuple[str, RawResult]]:
    """How the server answers each field we may send, and bad input."""
    plain = {k: base[k] for k in ("model", "input", "voice", "response_format")}
    variants = [
        ("bad voice", {**plain, "voice": BAD_VOICE}),
        ("empty input", {**plain, "input": ""}),
        ("unknown field", {**plain, "bogus_field": 1}),
        ("plain (4 fields)", plain),
        ('+ "stream": true', {**plain, "stream": True}),
        ('+ "stream_format": "audio"', {**plain, "stream_format": "audio"}),
        ('+ "speed": 0.9', {**plain, "speed": 0.9}),
        ('+ "speed": 1.0', {**plain, "speed": 1.0}),
    ]
    results = []
    for name, body in variants:
        results.append((name, await raw_request(client, url, body, timeout_s)))
    return results


# ---- the server, when we start it --------------------------------------------------------------
@contextlib.asynccontextmanager
async def started_server(command: str | None, url: str, timeout_s: float):
    """Start ``command`` (if given) and wait until ``url`` answers HTTP; kill its group at the end."""
    if not command:
        yield None
        return
    process = await asyncio.create_subprocess_exec(
        *shlex.split(command), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if process.returncode is not None:
                    raise SystemExit(f"server exited with {process.returncode} before answering")
                with contextlib.suppress(httpx.HTTPError):
                    await client.get(f"{url}/models")
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"server did not answer {url} within {timeout_s:g} s")
                await asyncio.sleep(0.5)
        yield process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


# ---- report ------------------------------------------------------------------------------------
def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def streaming_verdict(raw: RawResult) -> str:
    if raw.error or raw.status != 200:
        return f"no audio (HTTP {raw.status or '-'} {raw.error or ''})".strip()
    if "content-length" in raw.headers:
        how = f"one Content-Length body ({raw.headers['content-length']} bytes)"
    elif raw.headers.get("transfer-encoding", "").lower() == "chunked":
        how = f"chunked, {len(raw.chunk_sizes)} reads"
    else:
        how = f"{len(raw.chunk_sizes)} reads, no Content-Length"
    gap = (raw.first_byte_s or 0) - (raw.headers_s or 0)
    return f"{how}; headers→first byte {gap * 1000:.0f} ms; first byte→end " \
           f"{((raw.total_s or 0) - (raw.first_byte_s or 0)) * 1000:.0f} ms"


def describe_body(raw: RawResult) -> str:
    if raw.error:
        return raw.error
    kind = raw.headers.get("content-type", "?")
    if kind.startswith("application/json") or raw.status != 200:
        return raw.body_prefix[:300].decode("utf-8", "replace")
    return f"{kind}, {raw.nbytes} bytes, {raw.audio_s():.2f} s of audio"


def print_report(args: argparse.Namespace, engine: OpenAIRemoteEngine,
                 rows: list[tuple[str, RawResult, EngineResult]],
                 probes: list[tuple[str, RawResult]], cancel: dict[str, Any]) -> dict[str, Any]:
    print(f"\nserver {args.url}  model={args.model}  voice={args.voice}  "
          f"fields={','.join(args.stream_fields) or '-'}  engine rate={engine.sample_rate}")
    print(f"{'#':>2} {'chars':>5} {'srv hdr':>8} {'srv 1st':>8} {'eng 1st':>8} {'overhd':>7} "
          f"{'audio s':>8} {'srv RTF':>7} {'eng RTF':>7}  error")
    for i, (text, raw, eng) in enumerate(rows, 1):
        over = (None if eng.first_audio_s is None or raw.first_byte_s is None
                else eng.first_audio_s - raw.first_byte_s)
        srv_rtf = (raw.total_s / raw.audio_s()) if _is_audio(raw) and raw.total_s else None
        eng_rtf = (eng.total_s / eng.audio_s) if eng.total_s and eng.audio_s else None
        print(f"{i:>2} {len(text):>5} {_ms(raw.headers_s):>8} {_ms(raw.first_byte_s):>8} "
              f"{_ms(eng.first_audio_s):>8} {_ms(over):>7} {eng.audio_s:>8.2f} "
              f"{'-' if srv_rtf is None else f'{srv_rtf:.3f}':>7} "
              f"{'-' if eng_rtf is None else f'{eng_rtf:.3f}':>7}  {eng.error or raw.error or ''}")
    firsts = [e.first_audio_s for _, _, e in rows if e.first_audio_s is not None]
    srv_firsts = [r.first_byte_s for _, r, _ in rows if r.first_byte_s is not None]
    if firsts and srv_firsts:
        print(f"median first audio: server {statistics.median(srv_firsts) * 1000:.0f} ms, "
              f"engine {statistics.median(firsts) * 1000:.0f} ms (times in ms; RTF = wall / audio)")
    ok = [r for _, r, _ in rows if _is_audio(r)]
    print("\nquirks")
    if ok:
        first = ok[0]
        rate, source = first.rate()
        sizes = [s for r in ok for s in r.chunk_sizes]
        print(f"  streaming     : {streaming_verdict(first)}")
        print(f"  pcm rate      : {rate} Hz, {source}")
        print(f"  reads (httpx) : {len(sizes)} over {len(ok)} bodies; first {first.chunk_sizes[0]} B, "
              f"median {statistics.median(sizes):.0f} B, max {max(sizes)} B, "
              f"odd-sized {sum(1 for s in sizes if s % 2)}")
        shown = {k: v for k, v in first.headers.items()
                 if k in ("content-type", "content-length", "transfer-encoding") or k.startswith("x-")}
        print(f"  headers       : {json.dumps(shown)}")
    for name, raw in probes:
        print(f"  {name:<28}: HTTP {raw.status or '-'} {describe_body(raw)}")
    print(f"  cancel        : {json.dumps(cancel)}")
    print(f"  engine servers: {json.dumps(engine.servers())}")
    return {
        "url": args.url, "model": args.model, "voice": args.voice,
        "stream_fields": args.stream_fields, "engine_rate": engine.sample_rate,
        "utterances": [{"text": t, "server": _raw_dict(r), "engine": asdict(e)} for t, r, e in rows],
        "probes": {name: _raw_dict(r) for name, r in probes},
        "cancel": cancel, "servers": engine.servers(),
    }


def _is_audio(raw: RawResult) -> bool:
    """A 200 with a non-JSON, non-empty body."""
    return (raw.status == 200 and not raw.error and raw.nbytes > 0
            and not raw.headers.get("content-type", "").startswith("application/json"))


def _raw_dict(raw: RawResult) -> dict[str, Any]:
    data = asdict(raw)
    data["body_prefix"] = describe_body(raw)
    data["chunks"] = len(raw.chunk_sizes)
    data["chunk_sizes"] = raw.chunk_sizes[:50]
    data["rate"] = raw.rate()[0] if _is_audio(raw) else None
    return data


# ---- main --------------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> dict[str, Any]:
    preset = load_presets().get(args.preset)
    async with started_server(args.start, args.url, args.start_timeout) as started_pid:
        server_pid = args.server_pid or started_pid
        engine = OpenAIRemoteEngine(
            [args.url], model=args.model, voices=[args.voice], stream_fields=args.stream_fields,
            sample_rate=args.sample_rate, first_byte_timeout_s=args.first_byte_timeout,
            stall_timeout_s=args.first_byte_timeout, backoff_s=0.5)
        await engine.load()
        timeout = httpx.Timeout(args.first_byte_timeout, read=args.first_byte_timeout)
        async with httpx.AsyncClient(timeout=timeout,
                                     headers={"Accept-Encoding": "identity"}) as client:
            try:
                if not args.no_warmup:  # load the model and voice once, not in the table
                    await engine_utterance(engine, SpeechRequest(TEXTS[0], args.voice, preset))
                rows = []
                for i in range(args.utterances):
                    text = TEXTS[i % len(TEXTS)]
                    request = SpeechRequest(text, args.voice, preset)
                    body = engine.request_body(request)
                    if i % 2 == 0:
                        raw = await raw_request(client, args.url, body, args.utterance_timeout)
                        eng = await engine_utterance(engine, request)
                    else:
                        eng = await engine_utterance(engine, request)
                        raw = await raw_request(client, args.url, body, args.utterance_timeout)
                    rows.append((text, raw, eng))
                probes = await field_probes(client, args.url,
                                            engine.request_body(SpeechRequest(TEXTS[0], args.voice,
                                                                              preset)),
                                            args.utterance_timeout)
                cancel = await cancel_probe(engine, preset, args.voice, server_pid)
                cancel["hangup_before_first_byte"] = await early_disconnect_probe(
                    client, args.url, engine.request_body(SpeechRequest(TEXTS[0], args.voice,
                                                                        preset)), server_pid)
            finally:
                await engine.aclose()
        return print_report(args, engine, rows, probes, cancel)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="base URL ending in /v1 (loopback only)")
    parser.add_argument("--voice", required=True, help="a voice name the server offers")
    parser.add_argument("--model", default="tts-1")
    parser.add_argument("--utterances", type=int, default=5)
    parser.add_argument("--stream-fields", default="stream_format,speed",
                        help="comma-separated subset of stream,stream_format,speed ('' for none)")
    parser.add_argument("--sample-rate", type=int, default=None,
                        help="force the server's pcm rate (default: honour X-Sample-Rate / WAV, else 24000)")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--first-byte-timeout", type=float, default=30.0)
    parser.add_argument("--utterance-timeout", type=float, default=120.0)
    parser.add_argument("--start", default=None, help="command that starts the server (killed at the end)")
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument("--server-pid", type=int, default=None,
                        help="pid of a server already running, to watch its CPU after a cancel")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    args.stream_fields = [f for f in args.stream_fields.split(",") if f.strip()]
    args.url = args.url.rstrip("/")
    if urlparse(args.url).hostname not in LOOPBACK:
        parser.error("only loopback servers (127.0.0.1, localhost, ::1) are benchmarked")
    if not 1 <= args.utterances <= 50:
        parser.error("--utterances must be 1..50")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1, default=str)
    failed = [u for u in report["utterances"] if u["engine"]["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
