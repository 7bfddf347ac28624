"""Audio DSP between TTS engines and the phone network (8 kHz G.711 μ-law, 20 ms frames)."""

from tts_core.audio.frame_encoder import FRAME_BYTES, FRAME_MS, MulawFrameEncoder
from tts_core.audio.inbound import MulawDecoder
from tts_core.audio.mulaw import MULAW_SILENCE, TELEPHONY_RATE, mulaw_to_pcm16, pcm16_to_mulaw
from tts_core.audio.pcm_encoder import Pcm16Encoder
from tts_core.audio.resampler import StreamResampler

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "MULAW_SILENCE",
    "TELEPHONY_RATE",
    "MulawDecoder",
    "MulawFrameEncoder",
    "Pcm16Encoder",
    "StreamResampler",
    "mulaw_to_pcm16",
    "pcm16_to_mulaw",
]
