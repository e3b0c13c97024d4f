"""The pure rules of attachment fetching (``bridge.attachments.rules``) and the payload they
enrich (``bridge.attachments.payload``): literal URLs, statuses and JSON in, verdicts out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from yarl import URL

from bridge.attachments import payload
from bridge.attachments.rules import (
    Origin,
    Reason,
    Step,
    Stored,
    announced_too_large,
    next_step,
    redirect_url,
    request_url,
)

API = Origin.parse("https://api.openmail.sh")
LOCAL = Origin.parse("http://127.0.0.1:8025/anything/here")
GOOD = "https://api.openmail.sh/v1/attachments/msg_1/invoice.pdf"


def test_origin_makes_the_default_port_explicit_and_ignores_the_path() -> None:
    assert Origin.parse("https://API.openmail.sh/v1") == Origin("https", "api.openmail.sh", 443)
    assert Origin("http", "127.0.0.1", 8025) == LOCAL
    with pytest.raises(ValueError, match="not an http"):
        Origin.parse("ftp://api.openmail.sh")


@pytest.mark.parametrize(
    "url",
    [
        GOOD,
        "https://api.openmail.sh:443/v1/attachments/m/f",
        "HTTPS://API.OPENMAIL.SH/v1/attachments/m/f",
        "https://api.openmail.sh/v1/attachments/m/f/text",
        "https://api.openmail.sh/v1/attachments/m/a%20file..pdf",
    ],
)
def test_a_url_on_the_api_origin_is_requested_as_parsed(url: str) -> None:
    got = request_url(url, API)
    assert isinstance(got, URL)
    assert (got.scheme.lower(), got.raw_host, got.port) == ("https", "api.openmail.sh", 443)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (None, Reason.NO_URL),
        ("", Reason.NO_URL),
        (42, Reason.NO_URL),
        (["https://api.openmail.sh/x"], Reason.NO_URL),
        ("/v1/attachments/m/f", Reason.BAD_URL),
        ("api.openmail.sh/v1/attachments/m/f", Reason.BAD_URL),
        ("file:///etc/passwd", Reason.BAD_URL),
        ("https://[::1/x", Reason.BAD_URL),
        ("http://api.openmail.sh/v1/attachments/m/f", Reason.NOT_API_HOST),
        ("https://api.openmail.sh:8443/v1/attachments/m/f", Reason.NOT_API_HOST),
        ("https://evil.example/v1/attachments/m/f", Reason.NOT_API_HOST),
        ("https://api.openmail.sh.evil.example/x", Reason.NOT_API_HOST),
        ("https://api.openmail.sh./x", Reason.NOT_API_HOST),
        ("https://user:pw@api.openmail.sh/x", Reason.CREDENTIALS_IN_URL),
        ("https://api.openmail.sh@evil.example/x", Reason.CREDENTIALS_IN_URL),
        ("https://api.openmail.sh\\@evil.example/x", Reason.BAD_URL),
        ("https://:@api.openmail.sh/x", Reason.CREDENTIALS_IN_URL),
    ],
)
def test_anything_else_is_refused_before_any_request(url: object, reason: Reason) -> None:
    assert request_url(url, API) is reason


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openmail.sh/v1/attachments/m/../../inboxes",
        "https://api.openmail.sh/v1/attachments/m/%2e%2e/%2E%2E/inboxes",
        "https://api.openmail.sh/v1/attachments/m/x%2F..%2F..%2F..%2Finboxes",
        "https://api.openmail.sh/v1/attachments/m/..%5C..%5Cinboxes",
        "https://api.openmail.sh/v1/inboxes",
        "https://api.openmail.sh/v1/attachments/m",
        "https://api.openmail.sh/",
    ],
)
def test_only_an_attachment_path_is_asked_for_with_the_key(url: str) -> None:
    # A filename's dot segments must not make the request another API endpoint's.
    assert request_url(url, API) is Reason.BAD_URL


@pytest.mark.parametrize(
    "url",
    [
        # Another endpoint's path that only holds an attachment path: the key must not go there.
        "https://api.openmail.sh/_private/admin/v1/attachments/a/b",
        "https://api.openmail.sh/_sim/v1/attachments/a/b",
        "https://api.openmail.sh/v1/attachments/a/b/c",
        "https://api.openmail.sh/v1/attachments/a/b/text/more",
    ],
)
def test_an_attachment_path_must_be_the_whole_path(url: str) -> None:
    assert request_url(url, API) is Reason.BAD_URL


@pytest.mark.parametrize(
    ("api_url", "url", "asked"),
    [
        # Under the API's own path: a proxy serving it at /openmail.
        (
            "https://proxy.example/openmail",
            "https://proxy.example/openmail/v1/attachments/m/f",
            True,
        ),
        (
            "https://proxy.example/openmail/",
            "https://proxy.example/openmail/v1/attachments/m/f",
            True,
        ),
        ("https://proxy.example/openmail", "https://proxy.example/v1/attachments/m/f", False),
        ("https://proxy.example/openmail", "https://proxy.example/other/v1/attachments/m/f", False),
        # An api_url naming the version: the attachment paths name it themselves.
        ("https://api.openmail.sh/v1", GOOD, True),
        ("https://api.openmail.sh/v1/", GOOD, True),
    ],
)
def test_attachment_paths_are_under_the_apis_own_path(api_url: str, url: str, asked: bool) -> None:
    got = request_url(url, Origin.parse(api_url))
    assert isinstance(got, URL) is asked, got


def test_a_redirect_goes_to_https_anywhere_relative_targets_included() -> None:
    here = URL(GOOD)
    signed = redirect_url("https://files.example/s/abc?signature=x", here, API)
    assert signed == URL("https://files.example/s/abc?signature=x")
    assert redirect_url("/signed/abc", here, API) == URL("https://api.openmail.sh/signed/abc")


@pytest.mark.parametrize(
    "location",
    [
        None,
        "",
        "http://files.example/s/abc",
        "ftp://files.example/s/abc",
        "https://u:p@files.example/s/abc",
        "https://[::1/x",
    ],
)
def test_a_redirect_elsewhere_is_refused(location: str | None) -> None:
    assert redirect_url(location, URL(GOOD), API) is Reason.REDIRECT_REFUSED


def test_plain_http_redirects_only_behind_a_plain_http_api() -> None:
    here = URL("http://127.0.0.1:8025/v1/attachments/m/f")
    assert redirect_url("http://127.0.0.1:9/s", here, LOCAL) == URL("http://127.0.0.1:9/s")
    assert redirect_url("https://files.example/s", here, LOCAL) == URL("https://files.example/s")
    assert redirect_url("http://files.example/s", URL(GOOD), API) is Reason.REDIRECT_REFUSED


@pytest.mark.parametrize(
    ("status", "redirected", "expected"),
    [
        (200, False, Step.READ),
        (204, True, Step.READ),
        (302, False, Step.FOLLOW),
        (307, False, Step.FOLLOW),
        (302, True, Reason.REDIRECT_REFUSED),
        (308, True, Reason.REDIRECT_REFUSED),
        (304, False, Reason.HTTP_ERROR),
        (401, False, Reason.UNAUTHORIZED),
        (403, True, Reason.UNAUTHORIZED),
        (404, False, Reason.NOT_FOUND),
        (410, False, Reason.NOT_FOUND),
        (400, False, Reason.HTTP_ERROR),
        (408, False, Step.RETRY),
        (429, False, Step.RETRY),
        (500, False, Step.RETRY),
        (503, True, Step.RETRY),
    ],
)
def test_what_a_status_means(status: int, redirected: bool, expected: object) -> None:
    assert next_step(status, redirected=redirected) is expected


@pytest.mark.parametrize(
    ("size", "over"),
    [(101, True), ("101", True), (100, False), (None, False), ("x", False), (True, False)],
)
def test_an_announced_size_only_ever_refuses(size: object, over: bool) -> None:
    assert announced_too_large(size, 100) is over


# --- the payload ---------------------------------------------------------------------------------


def event(attachments: object, **message: object) -> bytes:
    body = {
        "event": "message.received",
        "event_id": "evt_1",
        "message": {"id": "msg_1", "subject": "Ünïcode", "attachments": attachments, **message},
        "thread_id": "thr_1",
    }
    return json.dumps(body).encode()


ITEM = {"filename": "a.pdf", "contentType": "application/pdf", "sizeBytes": 3, "url": GOOD}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"event": "message.received"}',
        b'{"message": "text"}',
        b'{"message": {"id": "m"}}',
        event(None),
        event([]),
        event(["a string", 3, None]),
        b"[" * 100_000,
    ],
)
def test_nothing_to_enrich(raw: bytes) -> None:
    assert payload.read(raw) is None


@pytest.mark.parametrize("attachments", [{"url": GOOD}, "https://x", 5, True])
def test_an_attachment_list_that_is_not_a_list_is_malformed(attachments: object) -> None:
    assert payload.read(event(attachments)) is payload.Malformed.NOT_A_LIST


def test_each_object_gains_its_outcome_and_nothing_else_changes() -> None:
    raw = event([ITEM, "not an object", {**ITEM, "filename": "b.png"}], cc=["x@y"])
    listing = payload.read(raw)
    assert isinstance(listing, payload.Listing)
    assert len(listing) == 2
    assert listing.skipped == 1
    stored = Stored(Path("/var/lib/b/attachments/" + "a" * 64), "a" * 64, 3)
    out = json.loads(payload.written(listing, [stored, Reason.NOT_FOUND]))
    before = json.loads(raw)
    got = out["message"].pop("attachments")
    want = before["message"].pop("attachments")
    assert out == before  # the rest of the event, key order included
    assert list(out) == list(before)
    assert got[0] == {**want[0], "local_path": str(stored.path), "sha256": "a" * 64}
    assert list(got[0])[:4] == ["filename", "contentType", "sizeBytes", "url"]
    assert got[1] == "not an object"
    assert got[2] == {**want[2], "reason": "not_found"}
    assert got[2]["url"] == GOOD


def test_values_the_bridge_sets_are_never_taken_from_the_payload() -> None:
    forged = {**ITEM, "local_path": "/etc/shadow", "sha256": "f" * 64, "reason": "forged"}
    listing = payload.read(event([forged, forged]))
    assert isinstance(listing, payload.Listing)
    stored = Stored(Path("/d/" + "b" * 64), "b" * 64, 1)
    first, second = json.loads(payload.written(listing, [stored, Reason.TIMEOUT]))["message"][
        "attachments"
    ]
    assert first["local_path"] == "/d/" + "b" * 64
    assert "reason" not in first
    assert second == {**ITEM, "reason": "timeout"}


def test_one_outcome_per_attachment() -> None:
    listing = payload.read(event([ITEM]))
    assert isinstance(listing, payload.Listing)
    with pytest.raises(ValueError, match="2 outcomes for 1"):
        payload.written(listing, [Reason.TIMEOUT, Reason.TIMEOUT])


def test_a_lone_surrogate_is_written_back_escaped_as_it_came() -> None:
    # An emoji cut in half by a length cap: legal JSON, not UTF-8 once decoded.
    listing = payload.read(event([{**ITEM, "parsedText": "ok \ud83d"}]))
    assert isinstance(listing, payload.Listing)
    out = payload.written(listing, [Reason.TIMEOUT])
    assert b'"parsedText":"ok \\ud83d"' in out
    assert json.loads(out)["message"]["attachments"][0]["reason"] == "timeout"


def test_a_number_no_float_holds_is_not_written_back_as_infinity() -> None:
    # Stored by an earlier release, which read 1e400 as inf: refused here, and the service
    # then sends the payload as received.
    listing = payload.read(event([ITEM], size=1e400))
    assert isinstance(listing, payload.Listing)
    with pytest.raises(ValueError, match="JSON compliant"):
        payload.written(listing, [Reason.TIMEOUT])
