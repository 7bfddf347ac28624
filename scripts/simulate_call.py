#!/usr/bin/env python
"""Simulate one phone call against a running bridge and keep what the caller heard.

Three kinds of call:
* default: the greeting only (``--greeting TEXT``, or the bridge's default greeting);
* ``--text "..."``: a loopback ConversationRelay agent streams that text as LLM-like tokens
  (``--token-ms`` apart, starting ``--after`` seconds into the call; no greeting unless
  ``--greeting`` is given);
* ``--recorded FILE.jsonl``: replays a recorded call (docs/recorded-calls.md), caller audio,
  DTMF and agent turns included.

Writes what the caller heard (8 kHz 16-bit mono WAV, silence included) to ``--wav`` and a timeline
(start, turns sent, first frames, playback, marks, clears, utterance ends, close) to
``--timeline`` (``.json``, or text for any other suffix; ``-`` prints it).

Usage:
  voice-bridge serve --insecure-dev --engine synthetic &
  .venv/bin/python scripts/simulate_call.py --text "Hello there. How can I help?" --wav out/call.wav \\
      --timeline -
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from telephony.recorded_call import agent_turn_messages, load_recording, silent_call
from telephony.testing.simulated_call import simulate, timeline_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulate_call.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the bridge's base URL")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--text", help="agent text, streamed by the loopback agent")
    what.add_argument("--recorded", type=Path, help="a recorded call to replay")
    parser.add_argument("--greeting", default=None,
                        help="greeting parameter (default: the bridge's greeting for a greeting-only "
                             "call, none with --text, the recorded one with --recorded)")
    parser.add_argument("--token-ms", type=float, default=30.0, help="ms between tokens (--text)")
    parser.add_argument("--after", type=float, default=0.3,
                        help="seconds after start before the first token (--text)")
    parser.add_argument("--voice", default=None)
    parser.add_argument("--preset", default=None)
    parser.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"),
                        help="sign the webhook (default $TWILIO_AUTH_TOKEN)")
    parser.add_argument("--public-url", default=None, help="the bridge's PUBLIC_URL, if it has one")
    parser.add_argument("--wav", type=Path, help="write what the caller heard here")
    parser.add_argument("--timeline", default="-",
                        help="timeline file: .json, else text; '-' prints it (default)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="hang up after this long")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    args = parser.parse_args(argv)

    greeting: str | None = args.greeting
    if args.recorded:
        recording = load_recording(args.recorded)
        if greeting is None:
            greeting = recording.greeting
    elif args.text:
        recording = silent_call(0.0, name="text", stop=False,
                                agent=agent_turn_messages(args.text, args.after, args.token_ms))
        greeting = greeting or ""
    else:
        recording = silent_call(0.0, name="greeting", stop=False)
    try:
        result, seconds = asyncio.run(simulate(
            args.url, recording, greeting=greeting, auth_token=args.auth_token or None,
            public_url=args.public_url, voice=args.voice, preset=args.preset, wav=args.wav,
            max_seconds=args.max_seconds, allow_remote=args.allow_remote))
    except SystemExit as exc:
        print(f"simulate_call: {exc}", file=sys.stderr)
        return 2
    text = timeline_text(result)
    if args.timeline == "-":
        print(text)
    else:
        out = Path(args.timeline)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".json":
            data: dict[str, Any] = result.as_dict(raw=True)
            out.write_text(json.dumps(data, indent=2) + "\n")
        else:
            out.write_text(text + "\n")
        print(text.splitlines()[0])
        print(f"timeline: {out}")
    if seconds is not None:
        print(f"heard: {args.wav} ({seconds:.2f} s)")
    return 0 if not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
