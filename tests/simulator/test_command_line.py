"""``openmail-bridge simulator``'s options, checked where the command line is read: a port out of
range or a webhook URL that is not one is a usage error (exit 2) naming the option, never a
traceback from deep inside the server. Run as users run it: a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge.cli import build_parser


def simulator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "simulator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--port", "99999"), "argument --port: not a port number from 0 to 65535: '99999'"),
        (("--port", "-1"), "argument --port: not a port number from 0 to 65535: '-1'"),
        (("--port", "80a"), "argument --port: not a port number from 0 to 65535: '80a'"),
        (
            ("--webhook-url", "notaurl", "--webhook-secret", "s"),
            "argument --webhook-url: not an http(s) URL with a host: 'notaurl'",
        ),
        (
            ("--webhook-url", "http://127.0.0.1:99999/hook", "--webhook-secret", "s"),
            "argument --webhook-url: not an http(s) URL with a host",
        ),
        (
            ("--webhook-url", "ftp://127.0.0.1/hook", "--webhook-secret", "s"),
            "argument --webhook-url: not an http(s) URL with a host",
        ),
    ],
)
def test_a_bad_port_or_webhook_url_is_a_usage_error(args: tuple[str, ...], named: str) -> None:
    result = simulator(*args)
    assert result.returncode == 2, result.stderr
    assert "usage: openmail-bridge simulator" in result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_the_ports_and_urls_that_work_are_taken_as_given() -> None:
    parser = build_parser()
    url = "https://[::1]:8443/h"
    args = parser.parse_args(
        ["simulator", "--port", "0", "--webhook-url", url, "--webhook-secret", "s"]
    )
    assert (args.port, args.webhook_url) == (0, url)
    assert parser.parse_args(["simulator", "--port", "65535"]).port == 65535
    assert parser.parse_args(["simulator"]).port == 8025
