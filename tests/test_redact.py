"""``bridge.redact``: what looks secret, and how URLs and free text are masked. Literal strings in,
literal strings out."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.redact import (
    MASK,
    header_secrets,
    literal_secrets,
    mask_url,
    names_secret,
    scrub_text,
    url_secrets,
)

# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "key",
        "api_key",
        "apikey",
        "apiKey",
        "X-Api-Key",
        "token",
        "access_token",
        "X-Auth-Token",
        "secret",
        "client_secret",
        "password",
        "passwd",
        "pwd",
        "sig",
        "signature",
        "X-Signature",
        "auth",
        "Authorization",
        "credential",
        "credentials",
        "SESSION_ID",
        "Cookie",
    ],
)
def test_names_that_look_secret(name: str) -> None:
    assert names_secret(name)


@pytest.mark.parametrize(
    "name",
    [
        "signal",
        "monkey",
        "event_id",
        "inbox_id",
        "url",
        "sink",
        "attempt",
        "x",
        "keyboard",
        "dedup_key",
    ],
)
def test_names_that_do_not(name: str) -> None:
    assert not names_secret(name)


# --- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://user:pass@agent.example/hook", "https://***@agent.example/hook"),
        ("nats://user:pass@nats:4222", "nats://***@nats:4222"),
        ("https://only-a-key@h/x", "https://***@h/x"),
        ("https://u:p@ss@h/x", "https://***@h/x"),  # an unescaped '@' in the password
        ("https://h/x?key=abc", "https://h/x?key=***"),
        ("https://h/x?token=abc&page=2", "https://h/x?token=***&page=2"),
        ("https://h/x?page=2&api_key=abc", "https://h/x?page=2&api_key=***"),
        ("https://h/x?apikey=a&sig=b&Signature=c", "https://h/x?apikey=***&sig=***&Signature=***"),
        ("https://h/x?api%5Fkey=abc", "https://h/x?api%5Fkey=***"),
        ("https://h/cb#access_token=abc&state=1", "https://h/cb#access_token=***&state=1"),
        ("https://h/x?next=https://g/?token=abc", "https://h/x?next=https://g/?token=***"),
        ("https://h/x?signal=TERM&monkey=1", "https://h/x?signal=TERM&monkey=1"),
        ("wss://api.openmail.sh/v1/ws", "wss://api.openmail.sh/v1/ws"),
        ("https://h/x?token=", "https://h/x?token="),
        (  # a capability URL: the path is the credential
            "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdEFGH1234ijklMNOP5678",
            "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/***",
        ),
        ("http://h:1/hooks/catch/4711/T0kenInPathZq8xW3vB5", "http://h:1/hooks/catch/4711/***"),
        ("https://h/api/v1/openmail-webhook-handler", "https://h/api/v1/openmail-webhook-handler"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_url_secrets_as_written_and_decoded() -> None:
    found = url_secrets("https://us%40er:p%40ss@h/x?token=a%2Fb&page=2")
    assert {"us%40er:p%40ss", "p%40ss", "p@ss", "us@er", "a/b", "a%2Fb"} <= set(found)
    assert "2" not in found
    assert url_secrets("https://h/x") == []
    assert url_secrets("https://h/hooks/T0kenInPathZq8xW3vB5/x") == ["T0kenInPathZq8xW3vB5"]


def test_header_secrets_include_the_credential_after_an_auth_scheme() -> None:
    found = header_secrets({"Authorization": "Bearer xyz-123", "X-Api-Key": "k-456"})
    assert found == ["Bearer xyz-123", "xyz-123", "k-456"]


def test_literal_secrets_longest_first_and_short_ones_dropped() -> None:
    assert literal_secrets(["abcd", "abcdefgh", "ab", "abcd"]) == ("abcdefgh", "abcd")
    # Longest first: a shorter secret inside a longer one must not leave the longer one's tail.
    assert scrub_text("key abcdefgh", ["abcd", "abcdefgh"]) == "key ***"


# --- free text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("GET https://u:p@host/x?token=abc&api_key=def failed", ["u:p", "abc", "def"]),
        ("connect to nats://user:pass@nats:4222 refused", ["user", "pass"]),
        ("rejected Authorization=Bearer xyz-123 X-Api-Key=k-456", ["xyz-123", "k-456"]),
        ("Authorization: Basic dXNlcjpwYXNz", ["dXNlcjpwYXNz"]),
        ("webhook-signature: v1,Zm9vYmFyYmF6", ["Zm9vYmFyYmF6"]),
        ('{"headers": {"X-Api-Key": "k-456", "Accept": "*/*"}}', ["k-456"]),
        ("Request(token='abc-123', page=2)", ["abc-123"]),
        ("key om_live_0123456789abcdef revoked", ["om_live_0123456789abcdef"]),
        ("whsec_Zm9vYmFyYmF6 was used", ["Zm9vYmFyYmF6"]),
    ],
)
def test_scrub_text_masks(text: str, hidden: list[str]) -> None:
    scrubbed = scrub_text(text)
    for value in hidden:
        assert value not in scrubbed
    assert MASK in scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "openmail.api_key: environment variable OPENMAIL_API_KEY is not set (${OPENMAIL_API_KEY})",
        "signal=SIGTERM action=drain",
        "X-OpenMail-Bridge-Source: webhook",
        "HTTP 500 from https://agent.example/hook",
        "sent 3 events to jane@example.com",
        '{"event_id": "evt_1", "inbox_id": "inb_2"}',
    ],
)
def test_scrub_text_leaves_prose_alone(text: str) -> None:
    assert scrub_text(text) == text


def test_scrub_text_masks_known_values_anywhere() -> None:
    assert scrub_text("echo: s3cr3t-value!", ["s3cr3t-value"]) == "echo: ***!"
    assert scrub_text("abc", ["abc"]) == "abc"  # under 4 characters: not masked


def test_scrub_text_masks_a_form_encoded_value_and_the_longest_of_overlapping_ones() -> None:
    assert scrub_text("body: pw=My+Pass+Word&x=1", ["my pass word"]) == "body: pw=***&x=1"
    # Longest first: the shorter secret must not leave a tail of the longer one showing.
    assert scrub_text("got zzabcd1234WXYZ", ["abcd1234WXYZ", "zzabcd12"]) == "got zz***"


@pytest.mark.parametrize(
    "echoed",
    [
        "X-Echo: s3cr3T/Value+1=",  # as sent
        "x-echo: s3cr3t/value+1=",  # a receiver that lowercases what it echoes
        "unexpected value S3CR3T/VALUE+1= in X-Echo",
        "GET /hook?k=s3cr3T%2FValue%2B1%3D",  # percent-encoded, in a URL or a form body
        "GET /hook?k=s3cr3t%2fvalue%2b1%3d",
        "GET /hook/s3cr3T/Value%2B1%3D",  # a URL's path keeps its slashes
        "İstanbul: s3cr3t/VALUE+1=",  # a character whose lowercase is longer shifts offsets
    ],
)
def test_scrub_text_masks_a_known_value_echoed_in_another_case_or_encoded(echoed: str) -> None:
    scrubbed = scrub_text(f"HTTP 400: {echoed} rejected", ["s3cr3T/Value+1="])
    assert "3cr3" not in scrubbed.lower()
    assert scrubbed.endswith(" rejected")
    assert "***" in scrubbed


_NAMES = st.sampled_from(["token", "api_key", "key", "sig", "password", "access_token", "secret"])
_VALUES = st.text(
    st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="-_.~"),
    min_size=4,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(name=_NAMES, value=_VALUES, other=_VALUES, user=_VALUES, password=_VALUES)
def test_a_secret_query_value_or_user_info_never_survives(
    name: str, value: str, other: str, user: str, password: str
) -> None:
    url = f"https://{user}:{password}@h.example/p?page={other}&{name}={value}"
    for masked in (mask_url(url), scrub_text(f"failed: {url} (retrying)")):
        assert f"{name}={value}" not in masked
        assert f"{name}={MASK}" in masked
        assert f"{user}:{password}" not in masked
        assert f"page={other}" in masked  # and what is not secret stays readable
    assert value in url_secrets(url)
    assert urllib.parse.unquote(password) in url_secrets(url)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("run", ["a-", "a.", "a+"])
def test_a_long_run_of_scheme_characters_is_scrubbed_in_linear_time(run: str) -> None:
    # A hang guard, not a speed target: a pattern tried at each character of the run took
    # quadratic time (10 KB: 0.2 s, so this 600 KB: over ten minutes); linear, milliseconds.
    hostile = run * 300_000 + "key"
    assert scrub_text(hostile, []) == hostile
    assert scrub_text("x_" + run * 10 + "https://user:pw@h/p", []) == (
        "x_" + run * 10 + "https://***@h/p"
    )
