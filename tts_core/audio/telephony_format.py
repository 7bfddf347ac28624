"""The phone line's audio format, in one place: 8 kHz G.711 μ-law, mono, 20 ms frames of 160 bytes.

Twilio Media Streams carries ``audio/x-mulaw`` at 8000 Hz both ways; we send and expect exactly one
20 ms frame per media message. Every module that needs a frame size, a frame duration or the line's
sample rate imports it from here, so the numbers cannot drift apart.
"""

from __future__ import annotations

TELEPHONY_RATE = 8000
"""Sample rate of Twilio Media Streams audio (audio/x-mulaw, 8000 Hz, mono)."""

FRAME_MS = 20
"""Duration of one media frame (Twilio sends and expects 20 ms per message)."""

FRAME_S = FRAME_MS / 1000
"""``FRAME_MS`` in seconds, for clocks that count in seconds."""

FRAME_SAMPLES = TELEPHONY_RATE * FRAME_MS // 1000
"""Samples per frame: 160."""

FRAME_BYTES = FRAME_SAMPLES
"""Bytes per μ-law frame: 160 (μ-law is one byte per sample)."""

FRAMES_PER_SECOND = 1000 // FRAME_MS
"""Media messages per second each way: 50."""

MULAW_SILENCE = 0xFF
"""μ-law code of linear 0 (what ``audioop.lin2ulaw`` gives for a zero sample)."""

SILENCE_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES
"""One frame of digital silence."""
