"""Speech synthesis core: engines, voices, presets, text segmentation and telephony audio DSP.

This package knows nothing about Twilio or agents (``telephony`` builds on it, never the reverse).
"""
