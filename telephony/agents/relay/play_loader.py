"""The agent's ``play`` messages become audio for ``call.play_audio``.

Why this is more than a download: a WAV of a few MB decodes to several times that in float32, an
agent may queue many plays, and the HTTP client's pool is shared by every call. So per call, at
most ``MAX_CONCURRENT_DOWNLOADS`` downloads run at once, and each play reserves its decoded size in
the call's ``PlayBudget`` (read from the WAV header, before decoding) and gives it back when it has
finished playing; one that does not fit is refused with an ``error``, never queued. A loop plays
the same buffer again, so it costs no memory; more than ``MAX_PLAY_LOOPS`` loops are cut to it.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from telephony.agents.audio_fetch import AudioFetchError, decode_wav, decoded_bytes, download_audio
from telephony.agents.play_budget import PlayBudget, megabytes
from telephony.agents.relay.speech_jobs import ReportError, Speak
from telephony.relay_protocol import Play

log = logging.getLogger(__name__)

MAX_PLAY_LOOPS = 10
MAX_CONCURRENT_DOWNLOADS = 2
"""``play`` downloads of one call that run at once (the HTTP client's pool is shared by all calls)."""


class PlayLoader:
    """What every ``play`` of one call shares: the HTTP client, the size cap, the budget, the
    download slots and the way to tell the agent a play was refused."""

    def __init__(self, http: httpx.AsyncClient, *, max_bytes: int, budget: PlayBudget,
                 report_error: ReportError) -> None:
        self.http = http
        self.max_bytes = max_bytes
        self.budget = budget
        self.report_error = report_error
        self.downloads = asyncio.Semaphore(MAX_CONCURRENT_DOWNLOADS)

    def request(self, message: Play) -> PlayRequest:
        """One play, to be prepared and released by its speech job."""
        return PlayRequest(message, self)


class PlayRequest:
    """One ``play``: its download, its share of the budget (``held_bytes``) and its playback."""

    def __init__(self, message: Play, loader: PlayLoader) -> None:
        self.message = message
        self._loader = loader
        self.held_bytes = 0

    async def prepare(self) -> Speak | None:
        """Download, reserve, decode; None when refused or failed (the agent has been told).

        Runs in the play's speech job, so the download overlaps speech queued before it."""
        loader, source = self._loader, self.message.source
        try:
            async with loader.downloads:
                body = await download_audio(loader.http, source, max_bytes=loader.max_bytes)
            need = decoded_bytes(body)
            if not self._reserve(need):
                await loader.report_error(
                    f"play {source}: refused: this call's play audio would exceed its budget "
                    f"({megabytes(loader.budget.held_bytes)} held, {megabytes(need)} more asked, "
                    f"limit {megabytes(loader.budget.limit_bytes)})")
                return None
            audio, rate = await asyncio.to_thread(decode_wav, body, source=source)
            del body
            # the header's promise, corrected to what decoding really holds
            if audio.nbytes != self.held_bytes:
                self.release()
                if not self._reserve(audio.nbytes):
                    await loader.report_error(f"play {source}: refused: this call's play audio "
                                              "would exceed its budget")
                    return None
        except AudioFetchError as exc:
            await loader.report_error(f"play {source}: {exc}")
            return None
        except Exception:  # a bug: logged with its traceback, and the agent is still answered
            log.exception("fetching %s failed", source)
            await loader.report_error(f"play {source}: download failed")
            return None
        loops = self.message.loop if self.message.loop is not None else 1
        times = loops if 1 <= loops <= MAX_PLAY_LOOPS else MAX_PLAY_LOOPS
        if times != loops:
            await loader.report_error(f"play {source}: loop={loops} is not supported; "
                                      f"playing {times} times")
        interruptible, preemptible = self.message.interruptible, self.message.preemptible

        # one buffer, played ``times`` times: a loop costs no memory
        return lambda call: call.play_audio(audio, rate, label=source, interruptible=interruptible,
                                            preemptible=preemptible, loops=times)

    def _reserve(self, n: int) -> bool:
        if not self._loader.budget.reserve(n):
            return False
        self.held_bytes = n
        return True

    def release(self) -> None:
        """Give this play's share of the budget back (when its job ends, however it ends)."""
        self._loader.budget.release(self.held_bytes)
        self.held_bytes = 0
