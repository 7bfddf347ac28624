"""The parts of the ConversationRelay client (``telephony.agents.relay_client.RelayAgent``).

One concept per module, each small enough to read at once:

- ``connection``: the WebSocket to the agent application (checked connect, signed handshake,
  ``setup``, sends that never hang a hook, bounded close);
- ``dispatch``: one frame from the agent → a typed message → the handler for its class (``match``);
- ``session``: one call's relay state between ``on_start`` and ``on_stop`` (what the dispatcher
  calls, how the session ends);
- ``text_replies``: ``text`` messages → speech, streamed replies and what happens to their tail
  when the caller cuts them;
- ``speech_jobs``: one task per ``say``/``play``, handed to the call in message order, bounded;
- ``play_loader``: ``play`` messages → audio (bounded downloads, the call's audio budget, loops).
"""
