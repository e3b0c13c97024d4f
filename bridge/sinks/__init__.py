"""Sinks: where events go. The ``Sink`` protocol and the registry from config ``type:`` to class.

Adding a sink type is one module defining an options dataclass and a class, plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from bridge.sinks.file import FileSink, FileSinkOptions
from bridge.sinks.http import HttpSink, HttpSinkOptions
from bridge.sinks.stdout import StdoutSink, StdoutSinkOptions

if TYPE_CHECKING:
    from bridge.config import SinkConfig
    from bridge.store import Delivery


class Sink(Protocol):
    """A destination for events. ``send`` raises ``RetryableDeliveryError`` or
    ``PermanentDeliveryError`` (``bridge.errors``) and returns only once the event is delivered
    (for a file: written, and fsynced as its policy says)."""

    name: str

    async def start(self) -> None: ...

    async def send(self, delivery: Delivery) -> None: ...

    async def reopen(self) -> None:
        """Reopen files (SIGHUP, after logrotate); a no-op for sinks without files."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkType:
    """A registry entry: the options dataclass the config loader fills, and the factory."""

    options: type
    factory: Callable[[SinkConfig], Sink]


SINK_TYPES: Final[dict[str, SinkType]] = {
    "http": SinkType(HttpSinkOptions, HttpSink),
    "file": SinkType(FileSinkOptions, FileSink),
    "stdout": SinkType(StdoutSinkOptions, StdoutSink),
}
