"""Moved to telephony/twilio/protocol.py; this name stays only while telephony/speaker.py and
telephony/recording.py (other owners) still import it. New code imports telephony.twilio.protocol."""

from telephony.twilio.protocol import *  # noqa: F403
from telephony.twilio.protocol import __all__  # noqa: F401
