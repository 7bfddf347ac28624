"""The outbound pipeline of a call, in three parts behind ``telephony.speaker.Speaker``.

- ``speech_queue``: utterances in the order they play; generations, preemption and cuts.
- ``renderer``: an utterance's source (text, streamed text, clip) to typed render items, from the
  engine or the phrase cache.
- ``pacer``: those items to the socket at playback pace, with typed ``marks`` and a ``mark_watch``
  that notices a Twilio side that stopped playing.
``render_loop`` feeds the pacer from the queue through the renderer; ``utterance`` is the record
they share; ``hooks`` what they report to the call.
"""

from telephony.outbound.hooks import SpeakerHooks
from telephony.outbound.mark_watch import MarkWatch
from telephony.outbound.marks import Mark
from telephony.outbound.pacer import Pacer, QueuedAudio
from telephony.outbound.render_loop import RenderLoop
from telephony.outbound.renderer import Renderer
from telephony.outbound.speech_queue import SpeechQueue
from telephony.outbound.utterance import AudioClip, SegmentSpan, SpeechSource, Utterance

__all__ = [
    "AudioClip",
    "Mark",
    "MarkWatch",
    "Pacer",
    "QueuedAudio",
    "RenderLoop",
    "Renderer",
    "SegmentSpan",
    "SpeakerHooks",
    "SpeechQueue",
    "SpeechSource",
    "Utterance",
]
