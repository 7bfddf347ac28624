"""One simulated call against a running bridge, kept whole: what the caller heard (as a WAV) and a
timeline of everything that happened (scripts/simulate_call.py is its command line)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from telephony.recorded_call import RecordedCall
from telephony.testing.replay import CallReplay, check_loopback, heard_wav
from telephony.testing.replay_agent import AgentServer
from telephony.testing.replay_result import CallResult


async def simulate(
    url: str,
    recording: RecordedCall,
    *,
    greeting: str | None,
    auth_token: str | None = None,
    public_url: str | None = None,
    voice: str | None = None,
    preset: str | None = None,
    wav: Path | None = None,
    tail_timeout_s: float = 15.0,
    max_seconds: float = 120.0,
    allow_remote: bool = False,
) -> tuple[CallResult, float | None]:
    """Run one call; returns its result (with timeline) and the WAV length written, if any."""
    check_loopback(url, allow_remote)
    async with AgentServer() as agents:
        replay = CallReplay(recording, call_id="sim", base_url=url, agent_server=agents,
                            auth_token=auth_token, public_url=public_url, voice=voice, preset=preset,
                            greeting=greeting, tail_timeout_s=tail_timeout_s, keep_audio=True,
                            keep_timeline=True)
        agents.register(replay)
        task = asyncio.create_task(replay.run())
        done, _ = await asyncio.wait([task], timeout=max_seconds)
        if not done:
            task.cancel()
        result = await task
    seconds = None
    if wav is not None and replay.emulator is not None:
        wav.parent.mkdir(parents=True, exist_ok=True)
        seconds = heard_wav(replay.emulator, wav)
    return result, seconds


def timeline_text(result: CallResult) -> str:
    """The result as text: the timeline, then the turns and the figures, then the errors."""
    lines = [f"call {result.call_sid} ({result.recording}): {result.status}, {result.duration_s:.2f} s"]
    for entry in result.timeline or []:
        detail = f"  {entry['detail']}" if entry.get("detail") else ""
        lines.append(f"{entry['t']:8.3f}s  {entry['event']:<22}{detail}")
    lines.append("")
    for turn in result.turns:
        lines.append(f"turn {turn['index']} ({turn['kind']}): ttfa {turn['ttfa_ms']} ms, "
                     f"{turn['outcome']}{', overlapped' if turn['overlapped'] else ''}: "
                     f"{turn['text'][:60]!r}")
    lines.append(f"heard {result.utterances_heard} utterances ({result.utterances_played} played, "
                 f"{result.utterances_cleared} cleared), {result.audio_s:.2f} s of audio, "
                 f"{result.underruns} underruns ({result.underrun_ms:.0f} ms), "
                 f"{result.marks_received} marks, {result.clears} clears, close {result.close_code}")
    if result.barge_in_ms:
        lines.append(f"barge-in reaction: {', '.join(f'{v:.0f} ms' for v in result.barge_in_ms)}")
    for error in result.errors:
        lines.append(f"! {error}")
    return "\n".join(lines)
