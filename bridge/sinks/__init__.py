"""Sinks: where events go. The ``Sink`` protocol and the registry from config ``type:`` to class.

Adding a sink type is one module defining an options dataclass and a class taking
``SinkConfig[ItsOptions]``, plus one line here. The registry is passed to the config loader
(``load_config(path, sink_types=SINK_TYPES)``), which fills each sink's options from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, TypeGuard, TypeVar, runtime_checkable

from bridge.config.schema import SinkConfig
from bridge.errors import DeliveryError
from bridge.sinks.file import FileSink, FileSinkOptions
from bridge.sinks.http import HttpSink, HttpSinkOptions
from bridge.sinks.nats import NatsSink, NatsSinkOptions
from bridge.sinks.stdout import StdoutSink, StdoutSinkOptions

if TYPE_CHECKING:
    from bridge.store import Delivery

OptionsT = TypeVar("OptionsT")


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


@runtime_checkable
class BatchSink(Sink, Protocol):
    """A sink that takes many events in one go (one write and one fsync for a file).

    ``send_batch`` returns one entry per delivery, in order: None when it is delivered, the
    ``PermanentDeliveryError`` that concerns it alone (its payload cannot be written), or a
    ``RetryableDeliveryError`` when the write failed after the lines before it were written
    (and made durable as the sink promises): those are delivered, it and the rest are not. A
    failure before anything was written raises ``RetryableDeliveryError``. The worker delivers
    what was not one by one, each with its own retries: one event's failure is never another's,
    and a line written is never written again.
    """

    async def send_batch(
        self, deliveries: Sequence[Delivery]
    ) -> Sequence[DeliveryError | None]: ...


@runtime_checkable
class WindowSink(Sink, Protocol):
    """A sink that can send a debounce window's events as one delivery, when ``sends_windows``
    says it does (an HTTP sink with ``format: batch``: one POST ``{"events": [...]}``).

    ``send_window`` takes the window's deliveries in order and raises as ``send`` does; its
    failure is every one of those events' (the one exception to "one event's failure is its
    own": a receiver that refuses the request has refused them all).
    """

    @property
    def sends_windows(self) -> bool: ...

    async def send_window(self, deliveries: Sequence[Delivery]) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkType:
    """A registry entry: the options dataclass the config loader fills, and the factory that
    builds the sink from a loaded ``SinkConfig``."""

    options: type
    factory: Callable[[SinkConfig[object]], Sink]


def sink_type(options: type[OptionsT], cls: Callable[[SinkConfig[OptionsT]], Sink]) -> SinkType:
    """The entry for sink class ``cls``, whose config's options are an ``options`` instance.

    The one place a loaded config's options (``object`` to the loader) meet their sink's type.
    """

    def factory(config: SinkConfig[object]) -> Sink:
        if not _has_options(config, options):
            raise TypeError(
                f"sink {config.name!r}: expected {options.__name__}, got {config.options!r}"
            )
        return cls(config)

    return SinkType(options, factory)


def _has_options(
    config: SinkConfig[object], options: type[OptionsT]
) -> TypeGuard[SinkConfig[OptionsT]]:
    return isinstance(config.options, options)


SINK_TYPES: Final[Mapping[str, SinkType]] = {
    "http": sink_type(HttpSinkOptions, HttpSink),
    "file": sink_type(FileSinkOptions, FileSink),
    "stdout": sink_type(StdoutSinkOptions, StdoutSink),
    "nats": sink_type(NatsSinkOptions, NatsSink),
}
