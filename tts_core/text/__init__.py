"""Text handling between the voice agent and the TTS engines."""

from tts_core.text.segmenter import TextSegmenter, segment_text

__all__ = ["TextSegmenter", "segment_text"]
