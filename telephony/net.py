"""The listening socket, set up for real-time audio.

TCP_NODELAY matters here: with Nagle's algorithm on, the burst of frames that starts an utterance
(the first frame goes out alone, the rest wait for its ACK, which the peer delays by up to 40 ms)
reached the client 40 ms late in our measurements. Linux copies the option from the listening
socket to every accepted connection, so we set it once, here.
"""

from __future__ import annotations

import socket


def listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
