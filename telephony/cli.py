"""``voice-bridge serve``: start the bridge under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

from telephony.config import ConfigError, settings_from_env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voice-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the Twilio bridge server")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8080)")
    serve.add_argument("--stream-port", type=int, default=None,
                       help="also serve /media-stream on this port with the lean picows listener")
    serve.add_argument("--public-url", default=None, help="externally visible https:// base URL")
    serve.add_argument("--engine", default=None, help="piper (default) or synthetic")
    serve.add_argument("--voice", dest="default_voice", default=None, help="default voice id")
    serve.add_argument("--preset", dest="default_preset", default=None, help="default preset")
    serve.add_argument("--voices-dir", default=None, help="directory of <id>.wav reference voices")
    serve.add_argument("--agent", dest="default_agent", default=None,
                       help="demo, openai-chat (needs VOICE_BRIDGE_LLM_URL), a ws(s):// "
                       "ConversationRelay agent URL, or python:module:attr")
    serve.add_argument("--stt", default=None, choices=["local", "openai", "off"],
                       help="speech recogniser: local (default, embedded Whisper), openai or off")
    serve.add_argument("--record-dir", default=None, help="record every call there (caller audio!)")
    serve.add_argument("--insecure-dev", action="store_true", default=None,
                       help="allow running without TWILIO_AUTH_TOKEN (no signature checks)")
    serve.add_argument("--log-level", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = settings_from_env(**overrides)
    except ConfigError as exc:
        print(f"voice-bridge: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from telephony.app import create_app
    from telephony.conn_guard import plan_budget, raise_fd_limit
    from telephony.net import listen_socket
    from telephony.server import build_server

    try:
        sock = listen_socket(settings.host, settings.port)
    except OSError as exc:
        print(f"voice-bridge: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 2
    old_limit, fd_limit = raise_fd_limit()
    budget = plan_budget(fd_limit=fd_limit, raised_from=old_limit, max_calls=settings.max_calls,
                         max_connections=settings.max_connections, max_pending=settings.max_pending,
                         max_pending_per_peer=settings.max_pending_per_peer)
    log = logging.getLogger("voice_bridge")
    log.info(budget.describe())
    if not budget.enough:
        log.warning("the open-file limit %d cannot hold VOICE_BRIDGE_MAX_CALLS=%d calls; raise "
                    "`ulimit -n` (or LimitNOFILE=) or lower VOICE_BRIDGE_MAX_CALLS", fd_limit,
                    settings.max_calls)
    server = build_server(create_app(settings), settings, budget, log_level=settings.log_level)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
