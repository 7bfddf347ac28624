#!/usr/bin/env python
"""Load test: replay recorded calls (docs/recorded-calls.md) against a running bridge.

For every call it POSTs /twiml (signed with --auth-token, or unsigned for a bridge started with
--insecure-dev), opens the Media Stream it is told to, plays Twilio's side with the TwilioEmulator
(caller audio, DTMF and stop on their recorded timing; playback emulated at 160 bytes per 20 ms;
marks echoed; every outbound message validated), and serves the call's recorded agent turns from
one loopback ConversationRelay agent server (agentUrl=ws://127.0.0.1:<port>/<call-id>). A bridge
with an auth token refuses loopback agents unless told: start it with
VOICE_BRIDGE_AGENT_ALLOW_HOSTS=127.0.0.1 (under --insecure-dev loopback is allowed).

Measured, overall and per call:
* TTFA per turn: from the agent's first token being sent (for the greeting: from ``start``) to the
  first media frame of the bridge's answer (p50/p90/p95/p99/max);
* underruns: gaps inside an utterance when the emulated Twilio buffer ran dry (count, total ms);
* barge-in reaction: from the onset of caller speech to the ``clear`` received;
* mark round trip: from a mark's arrival to its echo (the audio the bridge keeps buffered ahead);
* delivery RTF: wall time over which an utterance's frames arrived / its audio length (below 1
  when the bridge keeps ahead of real time, above 1 when it falls behind);
* errors: invalid outbound messages, closes with unexpected codes, timeouts, failed webhooks;
* the bridge process's CPU (utime+stime from /proc, --server-pid or found by its port); a bridge
  started with ``--workers N`` is N+1 processes holding the port (the supervisor and its workers):
  their CPU is added up, and listed per process.

``--processes K`` runs the load generator itself as K processes (the calls split between them), so
it can keep up with a bridge that has several cores; the report is over all their calls.

Usage:
  voice-bridge serve --insecure-dev --engine synthetic &
  .venv/bin/python scripts/loadtest.py --calls 20 --ramp-up 10 --json out/load.json --plot out/load.png

Exit status: 0 when the run completed without errors (underruns included, unless
--fail-on-underrun), 1 on protocol errors / failed calls / timeouts, 3 on underruns with
--fail-on-underrun, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from telephony.recorded_call import find_recordings, load_recording
from telephony.testing.load_report import format_report, progress_line, write_plot
from telephony.testing.load_run import DEFAULT_RECORDINGS, LoadConfig, Progress, run_loop
from telephony.testing.replay import check_loopback


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadtest.py", description=__doc__.split("\n\n")[0],
        epilog="Recordings: files or directories of *.jsonl (default tests/data/calls).",
    )
    parser.add_argument("recordings", nargs="*", help="recorded calls (files or directories)")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the bridge's base URL")
    parser.add_argument("--calls", type=int, default=4, help="concurrent calls (default 4)")
    parser.add_argument("--ramp-up", type=float, default=0.0, help="seconds to start them all over")
    parser.add_argument("--duration", type=float, default=120.0,
                        help="wall-clock cap in seconds for the whole run (default 120)")
    parser.add_argument("--loop", action="store_true",
                        help="start another call when one ends, until --duration")
    parser.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"),
                        help="sign webhooks with it (default $TWILIO_AUTH_TOKEN; unset: unsigned, "
                             "for a bridge started with --insecure-dev)")
    parser.add_argument("--public-url", default=None, help="the bridge's PUBLIC_URL, if it has one")
    parser.add_argument("--voice", default=None, help="voice parameter (default: the bridge's)")
    parser.add_argument("--preset", default=None, help="preset parameter (default: the bridge's)")
    parser.add_argument("--server-pid", default="auto",
                        help="pid of the bridge for CPU figures: a number, auto (default), none")
    parser.add_argument("--tail-timeout", type=float, default=10.0,
                        help="seconds to wait past a recording's end for the bridge to finish")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    parser.add_argument("--json", dest="json_out", type=Path, help="write the full report here")
    parser.add_argument("--plot", type=Path, help="write a PNG plot here (matplotlib)")
    parser.add_argument("--timelines", action="store_true", help="per-call event timelines in --json")
    parser.add_argument("--fail-on-underrun", action="store_true", help="exit 3 if any underrun")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--processes", type=int, default=1,
                        help="load generator processes, the calls split between them (default 1)")
    parser.add_argument("--lean", action="store_true",
                        help="the lean generator (one shared 20 ms ticker, raw sockets: ~1.6 ms of "
                             "CPU per call-second at 300+ calls, a third of the emulator's) instead "
                             "of one TwilioEmulator per call; the same report")
    parser.add_argument("--ticker-phases", type=int, default=4,
                        help="--lean: spread the calls over this many phases of the 20 ms period "
                             "(default 4; 1 = one burst per 20 ms)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.calls < 1 or args.duration <= 0 or args.ramp_up < 0 or args.processes < 1
            or args.ticker_phases < 1):
        print("loadtest: --calls, --processes and --ticker-phases must be >= 1, --duration > 0, "
              "--ramp-up >= 0",
              file=sys.stderr)
        return 2
    try:
        check_loopback(args.url, args.allow_remote)
        paths = find_recordings(args.recordings or [DEFAULT_RECORDINGS])
        recordings = [load_recording(p) for p in paths]
    except (FileNotFoundError, ValueError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    show = not args.quiet

    def progress(p: Progress) -> None:
        sys.stderr.write(progress_line(p))
        sys.stderr.flush()

    config = LoadConfig(
        url=args.url, recordings=recordings, calls=args.calls, ramp_up_s=args.ramp_up,
        duration_s=args.duration, loop=args.loop, auth_token=args.auth_token or None,
        public_url=args.public_url, voice=args.voice, preset=args.preset,
        server_pid=args.server_pid, tail_timeout_s=args.tail_timeout,
        allow_remote=args.allow_remote, keep_timelines=args.timelines,
        progress=progress if show else None, processes=args.processes, lean=args.lean,
        ticker_phases=args.ticker_phases,
    )
    report = run_loop(config)
    if show:
        sys.stderr.write("\n")
    print(format_report(report))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(report.to_json() + "\n")
        print(f"\nreport: {args.json_out}")
    if args.plot:
        write_plot(report, args.plot)
        print(f"plot: {args.plot}")
    if not report.ok:
        return 1
    if args.fail_on_underrun and report.underruns > 0:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
