"""Moved to telephony/twilio/protocol.py; this name stays only while modules of other owners
(speaker.py and the outbound pipeline, recording.py, some tests) still import it. New code imports
telephony.twilio.protocol."""

from telephony.twilio.protocol import *  # noqa: F403
from telephony.twilio.protocol import __all__  # noqa: F401
