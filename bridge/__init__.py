"""openmail-bridge: one durable, de-duplicated stream of OpenMail events, routed to sinks."""

__version__ = "0.1.0"
