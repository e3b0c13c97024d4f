"""Reading the addresses of a from/to value (bridge/addresses.py): what a sender writes in the
header decides nothing it does not really say, and nothing it writes can raise, run long or fill
memory."""

from __future__ import annotations

import pytest

from bridge import addresses as module
from bridge.addresses import MAX_HEADER, addresses, canonical, unreadable


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # Authors however they are separated, or not separated at all, each count.
        ("Mallory <mallory@evil.example>; CEO <ceo@partner.example>",
         ("mallory@evil.example", "ceo@partner.example")),
        ('"Mallory" <mallory@evil.example> "CEO" <ceo@partner.example>',
         ("mallory@evil.example", "ceo@partner.example")),
        ("<ceo@partner.example> mallory@evil.example",
         ("ceo@partner.example", "mallory@evil.example")),
        # A mailbox with two angle-addrs (malformed) names both.
        ("Ceo <ceo@x.com> <attacker@evil.org>", ("ceo@x.com", "attacker@evil.org")),
        # An empty or unclosed angle-addr leaves the address that is written.
        ("mallory@evil.example <>", ("mallory@evil.example",)),
        ("MAILER-DAEMON@mx.example.org <>", ("mailer-daemon@mx.example.org",)),
        ("Agent <agent@example.com", ("agent@example.com",)),
        # Each address once, whatever the order or case it comes in.
        ("mallory@evil.example, MALLORY@evil.example", ("mallory@evil.example",)),
    ],
)  # fmt: skip
def test_every_author_the_header_names_counts(header: str, expected: tuple[str, ...]) -> None:
    assert addresses(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "ceo@x.com <attacker@evil.org>",
        "ceo@x.com (the boss) <attacker@evil.org>",
        '"ceo@x.com" <attacker@evil.org>',
        "=?utf-8?q?ceo=40x.com?= <attacker@evil.org>",
        "ceo@x.com ceo@x.com <attacker@evil.org>",
    ],
)
def test_an_address_written_as_a_display_name_is_never_read(header: str) -> None:
    assert addresses(header) == ("attacker@evil.org",)


def test_a_display_name_equal_to_its_address_is_kept() -> None:
    assert addresses("Attacker@Evil.org <attacker@evil.org>") == ("attacker@evil.org",)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ('"agent"@example.com', "agent@example.com"),
        ('"MAILER-DAEMON"@mx.example.org', "mailer-daemon@mx.example.org"),
        ('"two words"@example.com', '"two words"@example.com'),  # the quotes are needed there
        ("agent@example.com.", "agent@example.com"),
        ("bot@bücher.example", "bot@xn--bcher-kva.example"),
        ("bot@xn--bcher-kva.example", "bot@xn--bcher-kva.example"),
    ],
)
def test_one_mailbox_has_one_canonical_form(address: str, expected: str) -> None:
    assert canonical(address) == expected
    assert addresses(f"Someone <{address}>") == (expected,)


def test_nested_comments_deeper_than_the_parser_goes_name_no_address() -> None:
    poison = "(" * 1200 + "x) <mallory@evil.example>"
    assert addresses(poison) == ()
    assert unreadable(poison)


@pytest.mark.parametrize(
    "header",
    [
        '"' + '\\"' * 2000 + " <mallory@evil.example>",  # a quote never closed
        "(" + "\\(" * 2000 + " <mallory@evil.example>",  # a comment never closed
    ],
)
def test_a_quote_or_comment_never_closed_runs_to_the_end(header: str) -> None:
    assert addresses(header) == ()  # the angle-addr is inside it


def test_a_value_longer_than_the_bound_is_not_read() -> None:
    authors = ", ".join(f"a{n}@example.com" for n in range(1000))
    assert len(authors) > MAX_HEADER
    assert addresses(authors) == ()
    assert unreadable(authors)
    fits = ", ".join(f"a{n}@example.com" for n in range(200))
    assert len(fits) <= MAX_HEADER
    assert len(addresses(fits)) == 200


def test_only_short_values_are_cached() -> None:
    before = module._cached.cache_info().currsize
    addresses("Jane <jane@example.org>, " + "x" * 300 + "@example.org")
    assert module._cached.cache_info().currsize == before
    addresses('"Doe, Jane" <jane@example.org>')
    assert module._cached.cache_info().currsize in (before, before + 1)  # maybe cached already


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, False), ("", False), ("  ", False), ("Jane", True), ("undisclosed:;", True),
     ("jane@example.org", False)],
)  # fmt: skip
def test_unreadable_is_a_value_that_names_no_address(header: str | None, expected: bool) -> None:
    assert unreadable(header) is expected
