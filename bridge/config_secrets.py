"""The secret values a configuration holds, literally: what the log redactor (``bridge.logs``) and
``dlq list`` mask wherever they appear, beside what merely looks secret (``bridge.redact``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from bridge.config import Config
from bridge.nats.connection import credentials as nats_credentials
from bridge.redact import url_secrets

CREDENTIAL_HEADER: Final = re.compile(r"(?i)auth|key|token|secret|cookie|session|pass")


def config_secrets(config: Config) -> list[str]:
    """Every secret value in a config, for the log redactor."""
    om = config.openmail
    values = [s.get() for s in om.webhook.account_secrets]
    values += [s.get() for s in om.webhook.inbox_secrets.values()]
    for secret in (om.api_key, config.admin.token):
        if secret is not None:
            values.append(secret.get())
    for sink in config.sinks.values():
        secret = getattr(sink.options, "secret", None)
        if secret is not None:
            values.append(secret.get())
        # A capability URL (a Slack or Zapier hook) carries its credential in the URL itself.
        url = getattr(sink.options, "url", None)
        if isinstance(url, str):
            values += url_secrets(url)
        # Extra HTTP headers often carry credentials (Authorization, X-Api-Key).
        headers: Mapping[str, str] = getattr(sink.options, "headers", {})
        for name, value in headers.items():
            if CREDENTIAL_HEADER.search(name):
                values.append(value.split(" ", 1)[-1])
                values.append(value)
    if config.nats is not None:
        values += nats_credentials(config.nats)
    return values
