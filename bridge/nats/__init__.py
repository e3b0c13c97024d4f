"""NATS JetStream: the shared bus edge bridges publish to and sidecar bridges consume from.

- :mod:`~bridge.nats.subjects`: subject templates, their rendering and coverage (pure).
- :mod:`~bridge.nats.options`: connect options built from the ``nats:`` section (pure).
- :mod:`~bridge.nats.connection`: one client connection, retried forever, with its state.
- :mod:`~bridge.nats.denials`: publishes the server refused for want of permission, and who waits.
- :mod:`~bridge.nats.stream`: the stream created or validated, and its state.
- :mod:`~bridge.nats.wake`: what ends a NATS sink's retry wait early (connection or stream back).
- :mod:`~bridge.nats.bus`: the NATS parts of one bridge together, as the supervisor holds them.
"""
