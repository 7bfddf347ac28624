"""Everything that knows Twilio Media Streams, in one place.

- ``protocol``: the wire messages, typed both ways (parse what Twilio sends, encode what we send);
- ``media_scan``: the cheap recogniser for the 50-a-second ``media`` message;
- ``signatures``: X-Twilio-Signature, checked and computed; ``tokens``: our call-bound stream tokens;
- ``admission``: who may open a stream, as a typed ``Authenticated | Refused`` result;
- ``socket``: the stream socket's sender (stall watchdog), reader and bounded close, shared by the
  ASGI route (telephony/media_stream.py) and the lean picows listener (``picows_socket``);
- ``inbound``: routing a running call's messages to the call (audio, marks, DTMF, stop).

No module here imports the call, the agents or the engines: they depend on this, not the reverse.
"""
