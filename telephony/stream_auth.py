"""Moved to telephony/twilio/signatures.py (X-Twilio-Signature, stream URL) and
telephony/twilio/tokens.py (stream tokens); this name stays only while modules of other owners
(access.py, webhook.py, services.py, the relay agent) still import it. New code imports those."""

from telephony.twilio.signatures import (  # noqa: F401
    STREAM_PATH,
    SigningConfigError,
    sign,
    stream_url,
    validate_stream_handshake,
    validate_webhook,
)
from telephony.twilio.tokens import TOKEN_KEY_LABEL, TOKEN_VERSION, StreamTokens, token_key  # noqa: F401
