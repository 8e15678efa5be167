"""The egress allowlist as callers write it: what it accepts, how it normalises, what it refuses."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.network.allowlist import MAX_ENTRIES, AllowList


def refusal(entries: Any) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as caught:
        AllowList.parse(entries)
    return caught.value


def test_exact_names_match_themselves_in_any_case_with_or_without_the_final_dot() -> None:
    allow = AllowList.parse(["API.Example.COM."])
    assert allow.names == ("api.example.com",)
    assert allow.allows_name("api.example.com")
    assert allow.allows_name("Api.EXAMPLE.com.")
    assert not allow.allows_name("example.com")
    assert not allow.allows_name("www.api.example.com")
    assert not allow.allows_name("api.example.com.evil.net")


def test_a_wildcard_matches_names_below_its_domain_but_not_the_domain_itself() -> None:
    allow = AllowList.parse(["*.Example.com"])
    assert allow.suffixes == ("example.com",)
    assert allow.allows_name("www.example.com")
    assert allow.allows_name("a.b.example.com.")
    assert not allow.allows_name("example.com")
    # A suffix match is on a label boundary, not on the text.
    assert not allow.allows_name("badexample.com")
    assert not allow.allows_name("example.com.evil.net")


def test_cidrs_and_bare_addresses_become_networks_with_host_bits_cleared() -> None:
    allow = AllowList.parse(["203.0.113.7/24", "198.51.100.9", " 192.0.2.0/30 "])
    assert allow.networks == (
        ipaddress.IPv4Network("203.0.113.0/24"),
        ipaddress.IPv4Network("198.51.100.9/32"),
        ipaddress.IPv4Network("192.0.2.0/30"),
    )
    assert allow.entries() == ["203.0.113.0/24", "198.51.100.9/32", "192.0.2.0/30"]
    assert not allow.allows_name("198.51.100.9")  # networks are not names


def test_private_networks_may_be_allowed_explicitly() -> None:
    # Plain egress never reaches them; naming one is how a caller opts in (a LAN host).
    assert AllowList.parse(["10.0.0.5", "192.168.0.0/16"]).entries() == [
        "10.0.0.5/32",
        "192.168.0.0/16",
    ]


def test_duplicates_are_kept_once_in_the_callers_order() -> None:
    allow = AllowList.parse(
        ["b.example", "a.example", "B.example.", "*.x.example", "*.X.example",
         "192.0.2.1", "192.0.2.1/32", "a.example"]
    )  # fmt: skip
    assert allow.names == ("b.example", "a.example")
    assert allow.suffixes == ("x.example",)
    assert allow.networks == (ipaddress.IPv4Network("192.0.2.1/32"),)


def test_a_name_and_its_wildcard_are_different_entries() -> None:
    allow = AllowList.parse(["example.com", "*.example.com"])
    assert allow.entries() == ["example.com", "*.example.com"]
    assert allow.allows_name("example.com") and allow.allows_name("www.example.com")


def test_entries_list_names_then_wildcards_then_networks() -> None:
    allow = AllowList.parse(["192.0.2.0/24", "*.b.example", "a.example"])
    assert allow.entries() == ["a.example", "*.b.example", "192.0.2.0/24"]


@pytest.mark.parametrize(
    "entries",
    [
        [],
        ["example.com"],
        ["Mixed.Case.Example.", "*.Wild.Example", "203.0.113.9/24", "198.51.100.1", "x-1.io"],
        [f"host{i}.example" for i in range(MAX_ENTRIES)],
    ],
)
def test_parsing_the_entries_again_gives_the_same_list(entries: list[str]) -> None:
    allow = AllowList.parse(entries)
    again = AllowList.parse(allow.entries())
    assert again == allow
    assert again.entries() == allow.entries()


def test_an_empty_list_is_false_and_a_nonempty_one_true() -> None:
    assert not AllowList.parse([])
    assert not AllowList()
    assert AllowList.parse(["example.com"])
    assert AllowList.parse(["*.example.com"])
    assert AllowList.parse(["192.0.2.1"])


def test_any_iterable_of_strings_is_accepted() -> None:
    assert AllowList.parse(iter(("a.example", "b.example"))).names == ("a.example", "b.example")
    assert AllowList.parse(("a.example",)).names == ("a.example",)


def test_a_plain_string_instead_of_a_list_is_refused() -> None:
    # Iterating "example.com" would give single letters: say what went wrong instead.
    error = refusal("example.com")
    assert "must be a list of strings" in error.message
    assert error.hint is not None and "*.example.com" in error.hint


@pytest.mark.parametrize("entry", ["", "   ", None, 42, ["example.com"], b"example.com"])
def test_an_empty_or_non_string_entry_is_refused_by_name(entry: object) -> None:
    error = refusal(["ok.example", entry])
    assert error.message == f"allow_hosts entry {entry!r} is not a host name or CIDR"


@pytest.mark.parametrize(
    "entry",
    [
        "localhost",  # a single label
        "*.com",  # a wildcard over a whole top-level domain
        "*",
        "exa_mple.com",
        "exa mple.com",
        "-lead.example.com",
        "trail-.example.com",
        "ex!ample.com",
        "a..example.com",
        ".example.com",
        "*.*.example.com",
        "www.*.example.com",
        "a" * 64 + ".example.com",
        ".".join(["a" * 63] * 4),  # 255 characters
        "example.123",
    ],
)
def test_an_invalid_domain_name_is_refused_by_name(entry: str) -> None:
    error = refusal(["ok.example", entry])
    assert error.message == f"allow_hosts entry {entry!r} is not a valid domain name"
    assert error.hint is not None and "203.0.113.0/24" in error.hint


@pytest.mark.parametrize("entry", ["münchen.de", "\u212aample.com"])  # Kelvin sign folds to k
def test_a_non_ascii_name_is_refused_with_the_form_to_use(entry: str) -> None:
    error = refusal([entry])
    assert error.message.startswith(f"allow_hosts entry {entry!r} is not ASCII")
    assert "xn--" in error.message


def test_labels_and_names_at_the_length_limits_are_accepted() -> None:
    label63 = "a" * 63 + ".example.com"
    name253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name253) == 253
    assert AllowList.parse([label63, name253]).names == (label63, name253)
    assert AllowList.parse(["xn--mnchen-3ya.de", "1.example", "0-9.example"])


@pytest.mark.parametrize(
    "entry",
    ["10.0.0.0/33", "1.2.3", "256.1.1.1", "10.0.0.0/", "/8", "1.2.3.4/8/8", "1.2.3.4:80"],
)
def test_a_malformed_address_or_cidr_is_refused_by_name(entry: str) -> None:
    error = refusal([entry])
    assert error.message == f"allow_hosts entry {entry!r} is not a valid IPv4 address or CIDR"


@pytest.mark.parametrize("entry", ["0.0.0.0/0", "192.0.2.1/0"])
def test_a_network_of_every_address_is_refused(entry: str) -> None:
    error = refusal([entry])
    assert error.message == f"allow_hosts entry {entry!r} allows every address"
    assert error.hint is not None and "without allow_hosts" in error.hint


@pytest.mark.parametrize("entry", ["2001:db8::1", "2001:db8::/32", "::/0", "::ffff:192.0.2.1"])
def test_ipv6_is_refused_by_name(entry: str) -> None:
    error = refusal([entry])
    assert error.message == f"allow_hosts entry {entry!r} is IPv6; guests have IPv4 only"


def test_more_than_the_maximum_of_entries_is_refused() -> None:
    assert len(AllowList.parse([f"h{i}.example" for i in range(MAX_ENTRIES)]).names) == MAX_ENTRIES
    error = refusal([f"h{i}.example" for i in range(MAX_ENTRIES + 1)])
    assert error.message == (
        f"allow_hosts has {MAX_ENTRIES + 1} entries; at most {MAX_ENTRIES} are allowed"
    )
    assert error.hint is not None and "wildcard" in error.hint


def test_one_bad_entry_refuses_the_whole_list_naming_only_that_entry() -> None:
    error = refusal(["a.example", "192.0.2.0/24", "bad_name.example", "*.b.example"])
    assert "'bad_name.example'" in error.message
    assert "a.example'" not in error.message


@pytest.mark.parametrize("entry", ["example\n.com", "*.example\n.com", "a.b\n.example"])
def test_a_name_with_a_newline_inside_is_refused(entry: str) -> None:
    error = refusal([entry])
    assert error.message == f"allow_hosts entry {entry!r} is not a valid domain name"
