"""The groups ``telephony.config.Settings`` is composed of, one module per concern.

Each group is a pydantic model with its fields, their validators and the checks across them;
``Settings`` inherits them all, so every field keeps its name (and its ``VOICE_BRIDGE_*`` variable).
"""
