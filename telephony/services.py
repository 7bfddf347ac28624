"""Everything shared by all calls of one server: engine, voices, presets, caches, metrics, tokens.

Built once at start by the app's lifespan; calls borrow from it and never own it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from telephony.backends import build_engine, build_recogniser, start_engine, start_recogniser
from telephony.config import ConfigError, Settings
from telephony.drain import DrainState
from telephony.egress import EgressPolicy, guarded_client
from telephony.metrics import Metrics
from telephony.twilio.tokens import StreamTokens
from telephony.twilio_rest import TwilioCalls
from tts_core.audio import MulawFrameEncoder
from tts_core.engines import Engine
from tts_core.errors import VoiceBridgeError
from tts_core.phrase_cache import PhraseCache, PhraseKey
from tts_core.presets import Preset, PresetBook
from tts_core.render import RenderItem, utterance_frames
from tts_core.stt import Recogniser
from tts_core.voices import InvalidVoiceId, Voice, VoiceFetchError, VoiceNotFound, VoiceStore

log = logging.getLogger(__name__)


WARM_TTL_S = 60.0
"""A webhook re-warms a voice and preset at most this often."""


@dataclass
class Bridge:
    settings: Settings
    engine: Engine
    presets: PresetBook
    voices: VoiceStore
    phrases: PhraseCache
    metrics: Metrics
    tokens: StreamTokens
    http: httpx.AsyncClient
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    """Where calls' agents and play downloads may connect (telephony/egress.py)."""
    play_http: httpx.AsyncClient | None = None
    """The client for play downloads: every connection checked against ``egress``."""
    started_at: float = field(default_factory=time.monotonic)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    calls: dict[str, Any] = field(default_factory=dict)
    """Live call sessions by streamSid."""
    max_background: int = 256
    drain: DrainState = field(default_factory=DrainState)
    """SIGTERM's graceful drain (telephony/drain.py)."""
    _warm_until: dict[tuple[str, str], float] = field(default_factory=dict)
    recogniser: Recogniser | None = None
    """Shared by every call to hear callers; None when VOICE_BRIDGE_STT=off."""
    owns_recogniser: bool = True
    twilio: TwilioCalls | None = None
    """Twilio's REST API for hang-ups; None without TWILIO_ACCOUNT_SID (hang-ups close the stream)."""

    @classmethod
    async def start(cls, settings: Settings, engine: Engine | None = None,
                    recogniser: Recogniser | None = None) -> Bridge:
        """``recogniser`` overrides the configured one and stays the caller's to close (tests share
        one loaded model between many bridges)."""
        presets = settings.preset_book()  # loaded and checked once, when the settings were validated
        owns_recogniser = recogniser is None
        recogniser = await start_recogniser(settings, recogniser)
        engine = await start_engine(settings, engine,
                                    recogniser if owns_recogniser else None)
        http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
        voices = VoiceStore(settings.voices_dir, remote_base_url=settings.voice_server_url,
                            http_client=http, memory_capacity=settings.voice_cache_size,
                            disk_cache_max_bytes=settings.voice_disk_cache_mb * 1024 * 1024)
        egress = EgressPolicy.from_settings(settings)
        bridge = cls(
            settings=settings, engine=engine, presets=presets, voices=voices,
            egress=egress, play_http=guarded_client(egress),
            phrases=PhraseCache(max_bytes=settings.phrase_cache_mb * 1024 * 1024,
                                max_prerenders=settings.prerender_concurrency,
                                max_prerender_queue=settings.prerender_queue,
                                prerender_timeout_s=settings.prerender_timeout_s),
            metrics=Metrics(), http=http,
            tokens=StreamTokens(settings.twilio_auth_token, ttl_s=settings.token_ttl_s),
            recogniser=recogniser, owns_recogniser=owns_recogniser,
            twilio=TwilioCalls.from_settings(settings),
        )
        if engine.servers():
            bridge.metrics.watch_servers(engine.servers)
        if recogniser is not None and recogniser.servers():
            bridge.metrics.watch_servers(recogniser.servers, prefix="voice_bridge_stt_server")
        try:
            await bridge.resolve_voice(None)  # the default voice must exist: fail now, not per call
        except (LookupError, ValueError, VoiceFetchError) as exc:
            await bridge.aclose()
            raise ConfigError(f"VOICE_BRIDGE_DEFAULT_VOICE: {exc}") from None
        return bridge

    async def aclose(self) -> None:
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.phrases.aclose()
        await self.voices.aclose()
        await self.http.aclose()
        if self.play_http is not None:
            await self.play_http.aclose()
        if self.twilio is not None:
            self.twilio.close()
        await self.engine.aclose()
        if self.recogniser is not None and self.owns_recogniser:
            await self.recogniser.aclose()

    # ---- voices and presets ----------------------------------------------------------------------
    @property
    def default_voice(self) -> str:
        voice = self.settings.default_voice or self.engine.default_voice
        if voice is None:
            raise VoiceNotFound("no default voice configured")
        return voice

    def voice_may_exist(self, voice_id: str) -> bool:
        """Cheap check for the webhook (which must not wait on a fetch): built in, stored locally,
        or possibly on the configured voice server."""
        if voice_id in self.engine.builtin_voices() or self.settings.voice_server_url is not None:
            return True
        voices_dir = self.voices.voices_dir  # voice_id is already validated: safe in a path
        return self.voices.cached(voice_id) or (
            voices_dir is not None and (voices_dir / f"{voice_id}.wav").is_file())

    async def resolve_voice(self, voice_id: str | None) -> tuple[str, Voice | None]:
        """A built-in engine voice (no reference audio) or a stored cloning voice.

        Raises InvalidVoiceId / VoiceNotFound (and VoiceFetchError for remote failures).
        """
        voice_id = voice_id or self.default_voice
        if voice_id in self.engine.builtin_voices():
            return voice_id, None
        voice = await self.voices.get(voice_id)  # validates the id before any lookup
        return voice_id, voice

    def list_voices(self) -> list[dict[str, Any]]:
        builtin = [{"id": v, "kind": "builtin", "engine": self.engine.name}
                   for v in self.engine.builtin_voices()]
        stored = [{"id": v, "kind": "reference", "engine": self.engine.name,
                   "usable": self.engine.supports_cloning} for v in self.voices.list_local()]
        return builtin + stored

    # ---- priming -----------------------------------------------------------------------------
    async def warmup(self, voice_id: str | None, preset: Preset
                     ) -> tuple[str, float, dict[str, float]]:
        """The one warmup path (``/warmup`` and the webhook's ``prime``): resolve the voice, run
        ``Engine.warmup`` (a minimal synthesis on every target: each server of a remote fleet, each
        model replica), then prime the resampler and encoder.

        Returns the voice, the total milliseconds and the milliseconds per target.
        """
        started = time.perf_counter()
        voice_id, voice = await self.resolve_voice(voice_id)
        targets = await self.engine.warmup(voice_id, preset, voice)
        encoder = MulawFrameEncoder(self.engine.sample_rate)
        encoder.push(np.zeros(self.engine.sample_rate // 10, dtype=np.float32))
        encoder.flush()
        return voice_id, (time.perf_counter() - started) * 1000, targets

    def prime(self, voice_id: str, preset: Preset) -> None:
        """The webhook's warmup: at most once per voice and preset every ``WARM_TTL_S``.

        Each warmup runs a synthesis on every engine target (every server of a remote fleet), so
        one per incoming call would multiply a burst of calls by the fleet's size; kernels and
        caches stay warm far longer than the TTL. ``/warmup`` always runs.
        """
        key = (voice_id, preset.name)
        now = time.monotonic()
        if self._warm_until.get(key, 0.0) > now:
            return
        self._warm_until[key] = now + WARM_TTL_S
        if len(self._warm_until) > 1024:
            self._warm_until = {k: t for k, t in self._warm_until.items() if t > now}
        self.spawn(self.warmup(voice_id, preset), name="warmup")

    def prerender(self, voice_id: str, preset: Preset, text: str) -> bool:
        """Start rendering ``text`` into the phrase cache in the background (webhook greeting).

        Background work that never outranks live speech: its engine requests wait at +inf until a
        call follows the rendering, a bounded number run and wait (past that it is skipped and
        counted), and it is cancelled if no stream follows it in time (tts_core/phrase_cache.py).
        True if a pre-render was started.
        """
        if not text or not self.phrases.cacheable(text):
            return False
        key = PhraseKey(self.engine.name, voice_id, preset.name, text)

        async def render(deadline: Callable[[], float | None]) -> AsyncIterator[RenderItem]:
            _, voice = await self.resolve_voice(voice_id)
            async for batch in utterance_frames(self.engine, text, voice_id=voice_id, preset=preset,
                                                voice=voice, deadline=deadline):
                yield batch

        if self.phrases.has(key):
            return False
        started = self.phrases.prerender(key, render)
        if not started:
            self.metrics.error("prerender_skipped")
        return started

    def spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any] | None:
        """Run owned background work (cancelled at shutdown); bounded so a flood cannot pile up."""
        if len(self.background) >= self.max_background:
            coro.close()
            self.metrics.error("background_overload")
            return None
        task = asyncio.create_task(coro, name=name)
        self.background.add(task)
        task.add_done_callback(functools.partial(_background_done, self, name))
        return task


def _background_done(bridge: Bridge, name: str, task: asyncio.Task[Any]) -> None:
    """Forget a finished background task; count and log its failure (a deliberate error is one
    line, a bug comes with its traceback)."""
    bridge.background.discard(task)
    error = None if task.cancelled() else task.exception()
    if error is not None:
        log.warning("background %s failed: %s", name, error,
                    exc_info=None if isinstance(error, VoiceBridgeError) else error)
        bridge.metrics.error(f"{name}_failed")


__all__ = ["Bridge", "InvalidVoiceId", "VoiceNotFound", "build_engine", "build_recogniser"]
