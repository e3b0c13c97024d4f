"""What ``listen`` runs: the config tree it hands the loader, the state directory it keeps, and
the line it prints per delivery attempt. Pure: values in, values out.

``listen`` has no config file: its options become a config tree read by the same loader as
``run``'s file (``bridge.config.build_config``), so every rule and default of ``run`` applies.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Final

from bridge.printable import printable

SINK: Final = "forward"
"""The one sink's name: in the state database and in ``dlq --sink``."""
API_KEY_ENV: Final = "OPENMAIL_API_KEY"
URL_ENV: Final = "OPENMAIL_WS_URL"
SECRET_ENV: Final = "AGENT_WEBHOOK_SECRET"  # noqa: S105 (a variable's name)
ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""A variable name ``${...}`` can read."""

OPTION_OF_KEY: Final[Mapping[str, str]] = {
    "openmail.api_key": f"${API_KEY_ENV}",
    "openmail.websocket.url": "--url",
    "openmail.websocket.inbox_ids": "--inbox",
    f"sinks.{SINK}.url": "--forward-to",
    f"sinks.{SINK}.secret": "the signing secret",
    "state.path": "the state directory",
}
"""The config keys a user of ``listen`` gave through an option, by the name they know."""


def literal(text: str) -> str:
    """``text`` as a config value that is taken as written: ``$`` never starts a ``${VAR}``."""
    return text.replace("$", "$$")


def env_reference(name: str) -> str:
    """The config value that reads variable ``name`` (or the file ``${name}_FILE`` names)."""
    return f"${{{name}}}"


def state_dir(env: Mapping[str, str], home: Path, url: str, inboxes: Sequence[str]) -> Path:
    """``$XDG_STATE_HOME/openmail-bridge/listen-<hash>``: one directory per OpenMail URL and set of
    inboxes, so a restart resumes the same cursor and outbox, and a second instance on the same
    stream meets the first one's lock. The XDG spec ignores a relative ``$XDG_STATE_HOME``."""
    base = env.get("XDG_STATE_HOME", "")
    root = Path(base) if base.startswith("/") else home / ".local" / "state"
    # Order and repetition of --inbox do not make another stream.
    canonical = json.dumps([url, sorted(set(inboxes))], separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return root / "openmail-bridge" / f"listen-{digest}"


def config_tree(
    *,
    url: str,
    inboxes: Sequence[str],
    forward_to: str,
    secret: str,
    state_path: Path,
    log_level: str,
) -> dict[str, object]:
    """The config ``listen`` runs: the WebSocket source alone (no webhook listener, no admin
    server), one HTTP sink re-signing as OpenMail signs, the default route.

    Args:
        secret: the sink's ``secret`` value as the loader reads it: :func:`env_reference` or
            :func:`literal`.
    """
    return {
        "openmail": {
            "api_key": env_reference(API_KEY_ENV),
            "websocket": {"url": literal(url), "inbox_ids": [literal(i) for i in inboxes]},
            "webhook": {"enabled": False},
        },
        "state": {"path": literal(str(state_path))},
        "admin": {"enabled": False},
        "log": {"level": log_level},
        "sinks": {SINK: {"type": "http", "url": literal(forward_to), "secret": secret}},
    }


def explain(problem: str) -> str:
    """A loader problem (``key.path: message``) named by the option the user gave instead."""
    key, sep, message = problem.partition(": ")
    for prefix, option in OPTION_OF_KEY.items():
        if key == prefix or key.startswith((prefix + ".", prefix + "[")):
            return f"{option}: {message}" if sep else problem
    return problem


class Rejection(StrEnum):
    """What OpenMail refused for good, as the WebSocket source classifies it
    (``bridge.sources.ws_session.DisconnectKind``): ``listen`` stops on it."""

    KEY = "key_rejected"
    INBOX = "subscribe_rejected"


def rejection_message(rejection: Rejection, inboxes: Sequence[str], detail: str) -> str:
    """The one line ``listen`` ends with when OpenMail refuses the key or an inbox, named by the
    variable or option the user gave it through; ``detail`` is how (``close 4001``)."""
    if rejection is Rejection.KEY:
        return (
            f"listen: OpenMail rejected the API key in ${API_KEY_ENV} ({printable(detail)}); "
            "export a valid key and start again"
        )
    given = ", ".join(printable(i) for i in inboxes)
    return (
        f"listen: OpenMail refused the subscription: an inbox given with --inbox ({given}) is "
        f"not owned by the API key in ${API_KEY_ENV}; give only that account's inboxes, or no "
        "--inbox for all of them"
    )


class Outcome(StrEnum):
    """What one delivery attempt came to, as the worker goes on to treat it."""

    DELIVERED = "delivered"
    RETRYING = "will retry"
    DEAD = "refused, dead-lettered"


def attempt_line(
    at: float,
    *,
    event_id: str,
    event_type: str,
    inbox_id: str | None,
    status: int | None,
    outcome: Outcome,
    error: str | None = None,
) -> str:
    """``2026-02-24 10:05:00  evt_..  message.received  inb_..  [200] delivered``: local time,
    the event, the handler's status (``[---]`` without an answer) and what happens next."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    code = f"[{status}]" if status is not None else "[---]"
    shown = "  ".join(printable(v) for v in (event_id, event_type, inbox_id or "-"))
    line = f"{stamp}  {shown}  {code} {outcome}"
    return f"{line}: {printable(error)}" if error else line
