"""The HTTP sink's ``attachments`` option, and the bridge-wide facts the loader binds into it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from bridge.config.values import ByteSize, Duration, FilePath, Secret

DIRECTORY_NAME: Final = "attachments"
"""The default directory's name, beside the state database."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachmentsConfig:
    """``attachments: {fetch: true, ...}`` of an HTTP sink.

    The last three fields are no keys of the section: the loader binds them from
    ``openmail.api_url`` (or the URL derived from ``openmail.websocket.url``), ``openmail.api_key``
    and ``state.min_free`` (:meth:`bound`), so that a change to any of them replaces the sink on
    reload, like a change to its own keys.
    """

    fetch: bool = False
    dir: FilePath | None = None
    """Default ``<state directory>/attachments``."""
    max_bytes: ByteSize = 25 << 20
    """One attachment; a larger one is not stored (``reason: too_large``)."""
    max_total: ByteSize = 1 << 30
    """Every file in ``dir``; a fetch past it is not stored (``reason: store_full``)."""
    timeout: Duration = 30.0
    """How long a delivery waits for its event's attachments; then it goes with
    ``reason: timeout`` for those not yet stored."""
    retention: Duration = 7 * 86400.0
    """Files older than this (since they were last stored or needed again) are removed."""
    api_url: str = field(default="", metadata={"internal": True})
    api_key: Secret | None = field(default=None, metadata={"internal": True})
    min_free: int = field(default=0, metadata={"internal": True})

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError("max_bytes: must be at least 1 byte")
        if self.max_total < self.max_bytes:
            raise ValueError(
                f"max_total: is {self.max_total} bytes, less than max_bytes ({self.max_bytes}): "
                "an attachment of the allowed size could never be stored"
            )
        if self.timeout <= 0:
            raise ValueError("timeout: must be more than 0s")
        if self.retention <= 0:
            raise ValueError("retention: must be more than 0s")

    def bound(
        self, *, api_url: str, api_key: Secret | None, min_free: int, state_dir: Path
    ) -> AttachmentsConfig:
        """This option with the bridge-wide facts it needs, and ``dir`` defaulted."""
        return replace(
            self,
            dir=self.dir if self.dir is not None else state_dir / DIRECTORY_NAME,
            api_url=api_url,
            api_key=api_key,
            min_free=min_free,
        )
