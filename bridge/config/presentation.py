"""Presentation of a loaded config: ``describe`` (secrets masked, for ``check`` and ``/status``)
and ``config_warnings`` (what is valid but unsafe, for ``check`` to print and the supervisor to log
at start)."""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from bridge import redact
from bridge.config.directories import Verdict, check_directory, fixed_directory
from bridge.config.nats import dedup_window_short, duplicate_window_short
from bridge.config.schema import Config, SinkConfig
from bridge.config.values import Listen, Secret


def describe(value: object) -> object:
    """A JSON-able view of a config with every secret masked, for ``check`` and ``/status``.

    Masked: ``Secret`` values; every value of a field whose metadata says ``masked`` (an HTTP
    sink's ``headers``: names shown, values not); user-info and secret-looking query values of
    any URL. ``check``'s output reaches the journal through the systemd unit's ``ExecStartPre``.
    """
    if isinstance(value, Secret):
        return redact.MASK
    if isinstance(value, Listen | Path):
        return str(value)
    if isinstance(value, str):
        return redact.mask_url(value) if "://" in value else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, object] = {}
        for f in dataclasses.fields(value):
            if f.metadata.get("internal"):
                continue
            field_value = getattr(value, f.name)
            masked = f.metadata.get("masked")
            shown = _masked(field_value) if masked else describe(field_value)
            out[f.metadata.get("key", f.name)] = shown
        if isinstance(value, SinkConfig):
            options = out.pop("options")
            out.pop("name")
            if isinstance(options, dict):
                out.update(options)
        return out
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [describe(v) for v in value]
    return value


def _masked(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): redact.MASK for k in value}
    if isinstance(value, tuple | list):
        return [redact.MASK for _ in value]
    return None if value is None else redact.MASK


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Valid but unsafe: the bridge runs, and says so."""

    event: str
    """The log event name the supervisor logs it under."""
    key: str
    """The key path it is about."""
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


MIN_TOKEN_LENGTH: Final = 16
"""An admin token shorter than this is warned of: the login answers thousands of guesses a
second."""


def config_warnings(config: Config) -> list[ConfigWarning]:
    """What ``check`` prints as warnings and the supervisor logs at start."""
    warnings: list[ConfigWarning] = []
    ws = config.openmail.websocket
    if ws.enabled:
        parts = urllib.parse.urlsplit(ws.url)  # the loader checked it parses
        if parts.scheme == "ws" and not _is_loopback_host(parts.hostname or ""):
            warnings.append(
                ConfigWarning(
                    "config.websocket_cleartext",
                    "openmail.websocket.url",
                    f"ws:// to {parts.hostname} is not encrypted: the API key travels in clear "
                    "(use wss://)",
                )
            )
    api_url = config.openmail.api_url
    if api_url is not None:
        parts = urllib.parse.urlsplit(api_url)
        if parts.scheme == "http" and not _is_loopback_host(parts.hostname or ""):
            warnings.append(
                ConfigWarning(
                    "config.api_cleartext",
                    "openmail.api_url",
                    f"http:// to {parts.hostname} is not encrypted: attachment downloads send "
                    "the API key in clear (use https://)",
                )
            )
    admin = config.admin
    if admin.enabled and admin.token is None and not admin.listen.is_loopback:
        warnings.append(
            ConfigWarning(
                "admin.private_paths_disabled",
                "admin.token",
                f"is not set and admin.listen ({admin.listen}) is not a loopback address: "
                "/status and the other private paths answer 403 (/healthz, /readyz and "
                "/metrics still answer); set admin.token to use them",
            )
        )
    if admin.enabled and admin.token is not None and len(admin.token.get()) < MIN_TOKEN_LENGTH:
        warnings.append(
            ConfigWarning(
                "admin.token_short",
                "admin.token",
                f"is shorter than {MIN_TOKEN_LENGTH} characters: anyone who reaches the admin "
                "server can guess it (use e.g. `openssl rand -hex 24`)",
            )
        )
    for name, sink in config.sinks.items():
        # A file sink's directory is made on its first event; the loader refused one that can
        # never be made, this is one that may not be (missing, or not this user's to write).
        file = getattr(sink.options, "path", None)
        if isinstance(file, Path):
            verdict, message = check_directory(fixed_directory(str(file)))
            if verdict is Verdict.MAYBE:
                warnings.append(
                    ConfigWarning("config.file_sink_directory", f"sinks.{name}.path", message)
                )
    # max_body bounds a webhook body and a WebSocket frame alike. What a bridge takes from NATS
    # is bounded by the server's max_payload, known only once connected: nothing to say here.
    openmail = config.openmail
    takers = [
        name
        for name, enabled in (
            ("the webhook", openmail.webhook.enabled),
            ("the WebSocket", openmail.websocket.enabled),
        )
        if enabled
    ]
    if takers and config.state.max_bytes < openmail.webhook.max_body:
        blocks = ", and over the WebSocket it blocks the events after it"
        warnings.append(
            ConfigWarning(
                "config.spool_smaller_than_max_body",
                "state.max_bytes",
                f"({config.state.max_bytes} bytes) is below openmail.webhook.max_body "
                f"({openmail.webhook.max_body}), the largest event {' and '.join(takers)} "
                f"{'takes' if len(takers) == 1 else 'take'}: an event larger than the spool can "
                f"never be stored{blocks if openmail.websocket.enabled else ''}",
            )
        )
    if config.nats is not None and (short := duplicate_window_short(config.nats)):
        warnings.append(
            ConfigWarning("config.nats_duplicate_window", "nats.stream.duplicate_window", short)
        )
    if config.nats is not None and (
        replays := dedup_window_short(config.nats, config.state.dedup_window)
    ):
        warnings.append(ConfigWarning("config.nats_dedup_window", "state.dedup_window", replays))
    return warnings


def _is_loopback_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
