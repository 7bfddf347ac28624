#!/usr/bin/env python3
"""Hearing the caller: recognition accuracy and end-of-speech -> final ``prompt`` latency on real
human speech in telephone quality, measured end to end through a real bridge process.

Speech: the recordings (with transcripts) of the Debian package ``pocketsphinx-testdata``
(``apt-get install pocketsphinx-testdata``; BSD-2, the LibriVox readings are public domain): five
LibriVox sentences (clean read speech), five card names, "go forward ten meters" and a digit
string: 12 utterances by several speakers. Each is resampled to 8 kHz and G.711 μ-law encoded, and
streamed by the Twilio emulator in real time (20 ms frames) after 0.5 s of silence and before 1.5 s
of silence; the bridge decodes μ-law as it does for Twilio. A ConversationRelay agent in this
process records when each ``prompt`` arrives.

End of speech is the send time of the clip's last frame louder than -40 dBFS and within 30 dB of
its peak (the recordings' own background sits at -45 to -60 dBFS). Latency = final prompt's
arrival - end of speech. The bridge's own view (from its last speech frame to the prompt handed
to the agent) is read from its per-call log line.

Columns (one bridge process each, pinned to one core with one recogniser slot; this script runs
on the other core):
  default           VOICE_BRIDGE_STT_* defaults (endpoint 550 ms, speculative decode at 250 ms)
  no-speculation    VOICE_BRIDGE_STT_SPECULATIVE_MS=0: the decode starts at the endpoint
  remote            --remote: recognition by a second bridge process (not pinned, its embedded
                    recogniser with one slot, VOICE_BRIDGE_API_KEY set) over OpenAI's
                    /v1/audio/transcriptions: the bridge under test runs VOICE_BRIDGE_STT=openai
                    pointed at it (REMOTE_ENV), so its own core only detects turns
More columns: --config NAME=VAR=value,VAR=value.

Capacity (--capacity 2,4,6): N concurrent calls for --capacity-seconds, each caller talking half
the time (an utterance, then as long again in silence), against the default bridge on one core;
reports final-prompt latency per N and the bridge's CPU.

Usage: .venv/bin/python scripts/bench_stt.py [--rounds 2] [--remote] [--capacity 2,4,6,8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import wave
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import soxr
import websockets

from telephony.testing.fake_agents import PromptRecorder
from telephony.testing.twilio_emulator import SILENCE, TwilioEmulator
from tts_core.audio.mulaw import float_to_pcm16, mulaw_to_pcm16, pcm16_to_mulaw
from tts_core.stt.wer import word_errors

DATA_DIR = Path("/usr/share/pocketsphinx/test/data")
REMOTE_KEY = "sk-bench-stt-remote"
REMOTE_SERVER_ENV = {"VOICE_BRIDGE_API_KEY": REMOTE_KEY}
REMOTE_ENV = {"VOICE_BRIDGE_STT": "openai", "VOICE_BRIDGE_STT_URL": "{url}/v1",
              "VOICE_BRIDGE_STT_API_KEY": REMOTE_KEY}
"""How the bridge under test reaches a second bridge's /v1/audio/transcriptions (the remote
recogniser, tts_core/stt/openai_remote.py)."""


@dataclass
class Clip:
    name: str
    text: str
    mulaw: bytes
    speech_end_ms: int
    read_speech: bool


@dataclass
class Turn:
    clip: str
    latency_ms: float | None
    text: str
    errors: int
    words: int
    read_speech: bool


# ---- speech ----------------------------------------------------------------------------------------
def _read(path: Path) -> np.ndarray:
    if path.suffix == ".wav":
        with wave.open(str(path)) as w:
            assert w.getframerate() == 16000 and w.getnchannels() == 1
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    else:
        pcm = np.fromfile(path, dtype="<i2")
    return pcm.astype(np.float32) / 32768


def _transcripts(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"\s*<s>(.*)</s>\s*\((.+)\)", line)
        if match:
            found[match.group(2).strip()] = " ".join(match.group(1).split())
    return found


def telephone(audio16k: np.ndarray) -> bytes:
    return pcm16_to_mulaw(float_to_pcm16(soxr.resample(audio16k, 16000, 8000)))


def speech_end_ms(mulaw: bytes) -> int:
    pcm = mulaw_to_pcm16(mulaw).astype(np.float32) / 32768
    frames = pcm[: pcm.size // 160 * 160].reshape(-1, 160)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    return (int(np.nonzero(level > max(-40.0, level.max() - 30))[0][-1]) + 1) * 20


def load_clips(data_dir: Path) -> list[Clip]:
    if not (data_dir / "librivox" / "transcription").is_file():
        sys.exit(f"no speech data in {data_dir}: apt-get install pocketsphinx-testdata "
                 "(or pass --data-dir)")
    items: list[tuple[str, Path, str, bool]] = []
    for key, text in _transcripts(data_dir / "librivox" / "transcription").items():
        items.append((f"librivox/{key[-4:]}", data_dir / "librivox" / f"{key}.wav", text, True))
    for key, text in _transcripts(data_dir / "cards" / "cards.transcription").items():
        items.append((f"cards/{key}", data_dir / "cards" / f"{key}.wav", text, False))
    items.append(("goforward", data_dir / "goforward.raw", "go forward ten meters", False))
    # TIDIGITS naming: the digits are the file name, "z" is zero ("o" would be oh)
    items.append(("tidigits/2934z", data_dir / "tidigits" / "dhd.2934z.raw", "two nine three four zero",
                  False))
    clips = []
    for name, path, text, read in items:
        mulaw = telephone(_read(path))
        clips.append(Clip(name, text, mulaw, speech_end_ms(mulaw), read))
    return clips


# ---- bridges -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def bridge(env: dict[str, str], core: int | None, log_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    cmd = [sys.executable, "-m", "telephony", "serve", "--insecure-dev", "--engine", "synthetic",
           "--port", str(port)]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    full_env = {**os.environ, "VOICE_BRIDGE_LOG_LEVEL": "info", "VOICE_BRIDGE_STT_CONCURRENCY": "1",
                "VOICE_BRIDGE_DEFAULT_GREETING": "", **env}
    with log_path.open("w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)  # noqa: ASYNC220
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(600):
                if process.poll() is not None:
                    raise RuntimeError(log_path.read_text().strip().splitlines()[-1])  # noqa: ASYNC240
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base}/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(10)


def bridge_turns(log_path: Path) -> dict[str, list[dict]]:
    found = {}
    for line in log_path.read_text().splitlines():
        match = re.search(r"voice_bridge\.call: call (\{.*\})$", line)
        if match:
            summary = json.loads(match.group(1))
            found[summary["call_sid"]] = summary.get("caller_turns", [])
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- calls -----------------------------------------------------------------------------------------
async def open_call(client: httpx.AsyncClient, base: str, call_sid: str, agent_url: str) -> TwilioEmulator:
    response = await client.post(f"{base}/twiml?greeting=&agentUrl={agent_url}", data={"CallSid": call_sid})
    response.raise_for_status()
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    assert stream is not None
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    call = TwilioEmulator(stream.attrib["url"], call_sid=call_sid, stream_sid="MZ" + call_sid[2:],
                          custom_parameters=params, keep_audio=False)
    await call.connect()
    return call


async def speak(call: TwilioEmulator, clip: Clip, before_s: float, after_s: float) -> float:
    """Stream silence, the clip, silence; returns the wall time its last word was sent."""
    await call.send_silence(before_s)
    started = time.monotonic()
    await call.stream_audio(clip.mulaw + SILENCE * int(after_s / 0.02))
    return started + (clip.speech_end_ms - 20) / 1000


def score(clip: Clip, prompts: list[tuple[float, dict]], speech_end: float) -> Turn:
    finals = [(t, m) for t, m in prompts if m.get("last")]
    text = " ".join(m["voicePrompt"] for _, m in finals)
    errors, words = word_errors(clip.text, text)
    latency = (finals[-1][0] - speech_end) * 1000 if finals else None
    return Turn(clip.name, latency, text, errors, words, clip.read_speech)


async def accuracy_run(base: str, agent: PromptRecorder, agent_url: str, clips: list[Clip], rounds: int,
                       tag: str) -> list[Turn]:
    turns = []
    async with httpx.AsyncClient(timeout=30) as client:
        for r in range(rounds):
            for i, clip in enumerate(clips):
                sid = f"CA{tag}{r:02d}{i:03d}".ljust(34, "0")
                call = await open_call(client, base, sid, agent_url)
                speech_end = await speak(call, clip, 0.5, 1.5)
                await call.hang_up()
                turns.append(score(clip, agent.prompts.get(sid, []), speech_end))
                print(f"\r{tag}: {len(turns)}/{rounds * len(clips)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return turns


async def capacity_run(base: str, pid: int, agent: PromptRecorder, agent_url: str, clips: list[Clip],
                       calls: int, seconds: float) -> tuple[list[float], int, float]:
    """N callers, each talking half the time; returns latencies, turns without a prompt, CPU share."""
    latencies: list[float] = []
    missed = 0

    async def caller(index: int) -> None:
        nonlocal missed
        rng = random.Random(index)
        sid = f"CACAP{calls:03d}{index:04d}".ljust(34, "0")
        async with httpx.AsyncClient(timeout=30) as client:
            call = await open_call(client, base, sid, agent_url)
        await call.send_silence(rng.uniform(0, 2))  # callers do not all start at once
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            clip = rng.choice(clips)
            seen = len(agent.prompts.get(sid, []))
            speech_end = await speak(call, clip, 0.0, max(1.2, len(clip.mulaw) / 8000))
            prompts = agent.prompts.get(sid, [])[seen:]
            finals = [t for t, m in prompts if m.get("last")]
            if finals:
                latencies.append((finals[-1] - speech_end) * 1000)
            else:
                missed += 1
        await call.hang_up()

    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(caller(i) for i in range(calls)))
    share = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
    return latencies, missed, share


# ---- report ------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def wer(turns: list[Turn], read_only: bool = False) -> float:
    chosen = [t for t in turns if t.read_speech or not read_only]
    return 100 * sum(t.errors for t in chosen) / max(1, sum(t.words for t in chosen))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--remote", action="store_true", help="add the remote-recogniser column")
    parser.add_argument("--config", action="append", default=[],
                        help="extra column: NAME=VAR=value,VAR=value")
    parser.add_argument("--capacity", default="", help="concurrent calls to try, e.g. 2,4,6,8")
    parser.add_argument("--capacity-seconds", type=float, default=30.0)
    parser.add_argument("--capacity-only", action="store_true", help="skip the accuracy columns")
    parser.add_argument("--bridge-core", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    clips = load_clips(args.data_dir)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        others = set(range(os.cpu_count() or 1)) - {args.bridge_core}
        os.sched_setaffinity(0, others)  # the load generator stays off the bridge's core
    agent = PromptRecorder()
    agent_server = await websockets.serve(agent.handler, "127.0.0.1", 0)
    agent_url = f"ws://127.0.0.1:{agent_server.sockets[0].getsockname()[1]}/agent"
    logs = Path(os.environ.get("TMPDIR", "/tmp"))

    columns: list[tuple[str, dict[str, str]]] = [] if args.capacity_only else [
        ("default", {}), ("no-speculation", {"VOICE_BRIDGE_STT_SPECULATIVE_MS": "0"})]
    for spec in args.config:
        name, _, assignments = spec.partition("=")
        columns.append((name, dict(a.split("=", 1) for a in assignments.split(",") if a)))
    results: dict[str, object] = {}
    remote_bridge = None
    if args.remote and not args.capacity_only:
        remote_bridge = bridge(REMOTE_SERVER_ENV, None, logs / "bench_stt_remote_server.log")
        remote_base, _ = await remote_bridge.__aenter__()
        columns.append(("remote", {k: v.format(url=remote_base) for k, v in REMOTE_ENV.items()}))
    try:
        for index, (name, env) in enumerate(columns):
            log_path = logs / f"bench_stt_{name}.log"
            try:
                async with bridge(env, args.bridge_core, log_path) as (base, _):
                    turns = await accuracy_run(base, agent, agent_url, clips, args.rounds, f"{index:02d}")
            except RuntimeError as exc:
                results[name] = {"unavailable": str(exc)[:160]}
                print(f"{name}: not available: {exc}", file=sys.stderr)
                continue
            inside = [t.get("final_after_speech_ms") for turns_ in bridge_turns(log_path).values()
                      for t in turns_ if t.get("final_after_speech_ms") is not None and t.get("chars")]
            latencies = [t.latency_ms for t in turns if t.latency_ms is not None]
            results[name] = {
                "turns": len(turns), "no_prompt": sum(t.latency_ms is None for t in turns),
                "wer_read_speech": wer(turns, True), "wer_all": wer(turns),
                "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95), "max_ms": max(latencies),
                "bridge_p50_ms": pct(inside, 50), "bridge_p95_ms": pct(inside, 95),
                "speculative_hits": sum(t.get("speculative") == "hit" for v in bridge_turns(log_path).values()
                                        for t in v),
                "errors": {t.clip: t.text for t in turns if t.errors},
            }
        if args.capacity:
            capacity = {}
            async with bridge({}, args.bridge_core, logs / "bench_stt_capacity.log") as (base, pid):
                for n in [int(x) for x in args.capacity.split(",")]:
                    latencies, missed, share = await capacity_run(base, pid, agent, agent_url, clips, n,
                                                                  args.capacity_seconds)
                    capacity[n] = {"turns": len(latencies) + missed, "no_prompt": missed,
                                   "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95),
                                   "cpu": share}
                    print(f"capacity {n}: {capacity[n]}", file=sys.stderr)
            results["capacity"] = capacity
    finally:
        if remote_bridge is not None:
            await remote_bridge.__aexit__(None, None, None)
        agent_server.close()

    if columns:
        print_report(results, columns, clips, args)
    else:
        print_capacity(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


def print_report(results: dict, columns: list, clips: list[Clip], args: argparse.Namespace) -> None:
    names = [name for name, _ in columns]
    print(f"\n{len(clips)} utterances x {args.rounds} rounds of real human speech, 8 kHz μ-law; "
          "latency = end of speech -> final prompt at the agent\n")
    print("| measure | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    rows = [("WER, LibriVox read speech (%)", "wer_read_speech", "{:.1f}"),
            ("WER, all utterances (%)", "wer_all", "{:.1f}"),
            ("final prompt p50 (ms)", "p50_ms", "{:.0f}"), ("final prompt p95 (ms)", "p95_ms", "{:.0f}"),
            ("final prompt max (ms)", "max_ms", "{:.0f}"),
            ("bridge: last speech frame -> prompt p50 (ms)", "bridge_p50_ms", "{:.0f}"),
            ("bridge: ... p95 (ms)", "bridge_p95_ms", "{:.0f}"),
            ("turns / without a prompt", None, None), ("speculative decodes kept", "speculative_hits", "{}")]
    for label, key, fmt in rows:
        cells = []
        for name in names:
            column = results.get(name, {})
            if "unavailable" in column:
                cells.append("n/a")
            elif key is None:
                cells.append(f"{column.get('turns')} / {column.get('no_prompt')}")
            else:
                cells.append(fmt.format(column.get(key)))
        print(f"| {label} | " + " | ".join(cells) + " |")
    for name in names:
        column = results.get(name, {})
        if "unavailable" in column:
            print(f"\n{name}: {column['unavailable']}")
        elif column.get("errors"):
            print(f"\n{name} errors: " + "; ".join(f"{k}: {v!r}" for k, v in column["errors"].items()))
    print_capacity(results)


def print_capacity(results: dict) -> None:
    if "capacity" in results:
        print("\n| concurrent calls (talking half the time) | turns | without prompt | p50 (ms) | p95 (ms) "
              "| bridge CPU (of one core) |\n|---|---|---|---|---|---|")
        for n, row in results["capacity"].items():
            print(f"| {n} | {row['turns']} | {row['no_prompt']} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} "
                  f"| {row['cpu'] * 100:.0f}% |")


if __name__ == "__main__":
    asyncio.run(main())
