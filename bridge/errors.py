"""The bridge's exception hierarchy, classified once so callers decide by type, not by message.

BridgeError
├── ConfigError                 config file unreadable or invalid (lists every problem)
├── EventError                  a payload that is not an OpenMail event
│   └── MissingEventIdError     no usable event id (webhooks answer ``no_event_id``)
├── StoreError                  the durable spool
│   ├── StoreLockedError        another bridge holds this state
│   ├── StoreVersionError       the database was written by a newer version
│   ├── SpoolFullError          ingest must push back: size bound or free-disk floor reached
│   └── StoreUnavailableError   a write failed (read-only, full disk, I/O error); retried later
└── DeliveryError               a sink could not deliver
    ├── RetryableDeliveryError  try again later (connection, timeout, 408, 429, 5xx)
    └── PermanentDeliveryError  dead-letter at once (other 4xx, unusable payload)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable


class BridgeError(Exception):
    """Base class of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration cannot be used. ``problems`` holds one ``key.path: message`` per fault."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class EventError(BridgeError):
    """A payload is not a usable OpenMail event (not JSON, not an object, no id or type)."""


class MissingEventIdError(EventError):
    """The payload carries no ``event_id`` and nothing else identifies it."""


class StoreError(BridgeError):
    """The durable store failed."""


class StoreLockedError(StoreError):
    """Another process holds the state database."""


class StoreVersionError(StoreError):
    """The database schema is newer than this code understands."""


class SpoolFullError(StoreError):
    """The spool reached its size bound or the free-disk floor; ingest must push back."""


class StoreUnavailableError(StoreError):
    """A write to the store failed; nothing was acknowledged, and writes are retried later."""


class DeliveryError(BridgeError):
    """A sink failed to deliver an event."""


class RetryableDeliveryError(DeliveryError):
    """The delivery may succeed later. ``retry_after`` is a server-given minimum delay (seconds).

    ``wake``, when given, returns an awaitable that completes once what failed the delivery may
    have cleared (a connection that was down is up again): the retry then goes at once instead of
    at the end of its backoff. It never cuts short a ``retry_after``.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        wake: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.wake = wake


class PermanentDeliveryError(DeliveryError):
    """Retrying will not help: the delivery goes to the dead-letter table."""
