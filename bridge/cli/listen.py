"""``listen --forward-to URL``: the bridge without a config file, for a developer's machine.

OpenMail's WebSocket stream (all inboxes, or those given) goes through the same durable spool,
dedup and re-signing as ``run``, to one handler, with a line on stdout per delivery attempt. The
options become a config tree read by ``run``'s loader (``listen_plan``), and the bridge runs
under ``run``'s signal handling: SIGTERM/SIGINT drain and stop.

The line per attempt is printed by :class:`ForwardSink`, the HTTP sink wrapped where an attempt's
outcome is known, so the daemon's delivery path has no extra call per event.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, TypeGuard

import aiohttp

from bridge import logs, protocol
from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, refuse
from bridge.cli.listen_plan import (
    API_KEY_ENV,
    ENV_NAME,
    SECRET_ENV,
    URL_ENV,
    Outcome,
    Rejection,
    attempt_line,
    config_tree,
    env_reference,
    explain,
    literal,
    rejection_message,
    state_dir,
)
from bridge.cli.run import run_foreground
from bridge.cli.verbosity import log_level
from bridge.config import Config, SinkConfig, build_config
from bridge.delivery import SinkWorker
from bridge.errors import (
    ConfigError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StoreLockedError,
)
from bridge.redact import mask_url
from bridge.sinks import SINK_TYPES
from bridge.sinks.http import HttpSink, HttpSinkOptions
from bridge.sources.ws_session import Disconnect
from bridge.supervisor import Running, Supervisor

if TYPE_CHECKING:
    from bridge.store import Delivery, Store


def cmd_listen(args: argparse.Namespace) -> int:
    env = os.environ
    if not (env.get(API_KEY_ENV) or env.get(f"{API_KEY_ENV}_FILE")):
        return refuse(f"listen: {API_KEY_ENV} is not set: export your OpenMail API key in it")
    given: str | None = args.secret
    if given is not None:
        print(
            "openmail-bridge: warning: --secret shows in the process list and shell history; "
            f"prefer --secret-env VAR (default {SECRET_ENV})",
            file=sys.stderr,
        )
        if not given:
            return refuse("listen: --secret is empty")
        secret = literal(given)
    else:
        name: str = args.secret_env
        if not ENV_NAME.fullmatch(name):
            return refuse(f"listen: --secret-env: {name!r} is not a variable name")
        if not (env.get(name) or env.get(f"{name}_FILE")):
            return refuse(
                f"listen: {name} is not set: export the secret your handler verifies "
                "signatures with in it (or name another variable with --secret-env)"
            )
        secret = env_reference(name)
    url: str = args.url or env.get(URL_ENV) or protocol.DEFAULT_WS_URL
    inboxes: list[str] = args.inbox
    directory = state_dir(env, Path.home(), url, inboxes)
    level = _log_level(args)
    tree = config_tree(
        url=url,
        inboxes=inboxes,
        forward_to=args.forward_to,
        secret=secret,
        state_path=directory / "bridge.db",
        log_level=level,
    )
    try:
        config = build_config(tree, sink_types=SINK_TYPES, base_dir=Path.cwd(), env=env)
    except ConfigError as exc:
        print("openmail-bridge: listen: cannot start:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {explain(problem)}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        # Private: the spool holds event bodies, the lock file the owner's pid.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
    except OSError as exc:
        return refuse(
            f"listen: cannot create the state directory {directory}: {exc.strerror or exc}",
            EXIT_FAILURE,
        )
    bridges: list[ListenBridge] = []

    def build(config: Config) -> ListenBridge:
        bridges.append(ListenBridge(config))
        return bridges[-1]

    code = run_foreground(config, build)
    stopped_by = bridges[0].rejected if bridges else None
    if code == EXIT_OK and stopped_by is not None:
        return refuse(stopped_by, EXIT_FAILURE)
    return code


def _log_level(args: argparse.Namespace) -> str:
    # The global --log-level / -v; quiet by default, so that stdout's lines stand out.
    return log_level(args) or "warning"


class ListenBridge(Supervisor):
    """A bridge whose sinks print a line per delivery attempt, that says what it does, and that
    stops when OpenMail refuses its key or an inbox (:attr:`rejected` then says why)."""

    def __init__(self, config: Config) -> None:
        # Nothing to reload from (no file): SIGHUP applies the same config, a no-op.
        super().__init__(config, reload_config=lambda: config)
        self.rejected: str | None = None

    def _assemble(self, store: Store) -> Running:
        running = super()._assemble(store)
        if running.websocket is not None:
            running.websocket.on_rejected = self._on_rejected
        return running

    def _on_rejected(self, cause: Disconnect) -> bool:
        # The daemon retries a rejected key at the backoff cap, for a reload to mend; at a
        # developer's terminal nothing will (OpenMail's own CLI exits on 4001 too). Too many
        # connections may pass as another client closes: that one is retried.
        try:
            rejection = Rejection(cause.kind)
        except ValueError:
            return False
        detail = f"close {cause.code}" if cause.code is not None else cause.reason
        # A server's words may quote the key: masked as the logs mask it.
        detail = logs.REDACTOR.scrub(detail)
        self.rejected = rejection_message(
            rejection, self.config.openmail.websocket.inbox_ids, detail
        )
        self.request_stop()
        return True

    def _worker(self, store: Store, sink_config: SinkConfig[object]) -> SinkWorker:
        if not _is_http(sink_config):
            raise TypeError(f"listen forwards over HTTP only, not {sink_config.type!r}")
        return SinkWorker(sink_config, ForwardSink(sink_config), store, self.metrics)

    async def start(self) -> None:
        config = self.config
        ws = config.openmail.websocket
        try:
            await super().start()
        except StoreLockedError as exc:
            raise StoreLockedError(
                f"{exc}: a 'listen' for the same OpenMail URL and inboxes is already running; "
                "stop it, or listen to other inboxes"
            ) from None
        targets = ", ".join(
            mask_url(str(getattr(sink.options, "url", ""))) for sink in config.sinks.values()
        )
        print(
            f"openmail-bridge: listening to {mask_url(ws.url)} "
            f"(inboxes: {', '.join(ws.inbox_ids) or 'all'}), forwarding to {targets}; "
            f"state in {config.state.path.parent}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )


def _is_http(config: SinkConfig[object]) -> TypeGuard[SinkConfig[HttpSinkOptions]]:
    return isinstance(config.options, HttpSinkOptions)


class ForwardSink:
    """The HTTP sink ``run`` uses, printing one line per attempt once its outcome is known.

    The handler's status code is read off the sink's own session (an aiohttp trace hook, keyed by
    the ``X-Event-Id`` the request carries), so the HTTP sink itself is used unchanged.
    """

    def __init__(self, config: SinkConfig[HttpSinkOptions]) -> None:
        self.name = config.name
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._inner: HttpSink | None = None
        self._statuses: dict[str, int] = {}
        self._printing = True

    async def start(self) -> None:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._on_request_end)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.options.timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[trace],
        )
        self._inner = HttpSink(self._config, session=self._session)
        await self._inner.start()

    async def _on_request_end(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        event_id = params.headers.get(protocol.EVENT_ID_HEADER)
        if event_id is not None:
            self._statuses[event_id] = params.response.status

    async def send(self, delivery: Delivery) -> None:
        if self._inner is None:
            raise RuntimeError(f"sink {self.name!r} is not started")
        self._statuses.pop(delivery.event_id, None)
        try:
            await self._inner.send(delivery)
        except RetryableDeliveryError as exc:
            self._print(delivery, Outcome.RETRYING, str(exc))
            raise
        except PermanentDeliveryError as exc:
            self._print(delivery, Outcome.DEAD, str(exc))
            raise
        self._print(delivery, Outcome.DELIVERED, None)

    def _print(self, delivery: Delivery, outcome: Outcome, error: str | None) -> None:
        line = attempt_line(
            time.time(),
            event_id=delivery.event_id,
            event_type=delivery.type,
            inbox_id=delivery.inbox_id,
            status=self._statuses.pop(delivery.event_id, None),
            outcome=outcome,
            error=error,
        )
        if not self._printing:
            return
        try:
            print(line, flush=True)
        except (OSError, ValueError):
            # stdout gone (a closed pipe): the deliveries go on, only unreported.
            self._printing = False

    async def reopen(self) -> None:
        pass

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
