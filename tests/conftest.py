"""Shared fixtures (kept small: helpers live in their own modules under tests/)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.chat_standin import StandInChatServer


@pytest.fixture
async def chat_standin() -> AsyncIterator[StandInChatServer]:
    """A STAND-IN OpenAI-compatible chat server on loopback (see tests/chat_standin.py)."""
    async with StandInChatServer() as server:
        yield server
