"""``voice-bridge serve``: start the bridge under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from telephony.config import ConfigError, Settings, settings_from_env


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
    serve.add_argument("--workers", type=int, default=None,
                       help="processes serving the port (default: one per core; 1 with "
                       "--insecure-dev); limits such as max calls apply per process")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = settings_from_env(**overrides)
    except ConfigError as exc:
        print(f"voice-bridge: {exc}", file=sys.stderr)
        return 2
    from telephony import workers

    me = workers.identity()
    tag = f" w{me.index}" if me.count > 1 else ""
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s")
    count = settings.workers or workers.default_workers(settings.insecure_dev, settings.engine)
    if count > 1:
        return _supervise(argv if argv is not None else sys.argv[1:], settings, count)
    from telephony.app import create_app
    from telephony.conn_guard import plan_budget, raise_fd_limit
    from telephony.server import build_server

    try:
        sock = workers.listen_socket("http", settings.host, settings.port)
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


def _supervise(argv: list[str], settings: Settings, count: int) -> int:
    """``--workers N``: bind the listening socket(s) here, once, and run N workers on them."""
    from telephony import net, workers

    sockets = {}
    ports = {"http": ("--port", settings.port)}
    stream_port = settings.stream_port  # the lean listener (telephony/twilio/picows_socket.py)
    if stream_port is not None:
        ports["stream"] = ("--stream-port", stream_port)
    overrides: dict[str, str] = {}
    for role, (flag, port) in ports.items():
        try:
            sockets[role] = net.listen_socket(settings.host, port)
        except OSError as exc:
            print(f"voice-bridge: cannot listen on {settings.host}:{port}: {exc}", file=sys.stderr)
            return 2
        overrides[flag] = str(sockets[role].getsockname()[1])  # port 0: the one bound
    logging.getLogger("voice_bridge").warning(
        "voice-bridge: %d workers on %s:%s (pid %d supervises)", count, settings.host,
        overrides["--port"], os.getpid())
    return workers.run_workers(argv, count, sockets, overrides)


if __name__ == "__main__":
    sys.exit(main())
