"""pyro's nftables documents loaded into a real `nft`, each test in a throwaway namespace of its
own (the `netns_sandbox` fixture), read back with `nft -j list ruleset`.

The namespace the test process runs in is only read: `home_namespace_unchanged` (through
`netns_sandbox`) proves its ruleset and forwarding are as they were after every test.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from framework.sandbox_netns import (
    needs_namespaces,
    rules_here,
    ruleset_here,
    sets_here,
    tables_here,
)
from pyro_mcp.errors import HostRequirementError, SystemFault
from pyro_mcp.host import tools
from pyro_mcp.network import netns, rules
from pyro_mcp.network.allowlist import AllowList

needs_nft = needs_namespaces(nft=True)
EGRESS = {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                    "right": "@blocked"}}  # fmt: skip


def doc_rules(doc: rules.Doc, table: str) -> dict[str, list[list[dict[str, Any]]]]:
    """chain -> the expressions of the rules `doc` adds to `table`, in order."""
    chains: dict[str, list[list[dict[str, Any]]]] = {}
    for command in doc:
        rule = command.get("add", {}).get("rule")
        if rule is not None and rule["table"] == table:
            chains.setdefault(rule["chain"], []).append(rule["expr"])
    return chains


def elements(table: str, name: str) -> list[Any]:
    return list(sets_here(table)[name].get("elem", []))


def timeouts() -> dict[str, tuple[int, int]]:
    """address -> (timeout, expires) of the allow_dns set."""
    found = {}
    for item in elements(rules.VM_TABLE, "allow_dns"):
        elem = item["elem"]
        found[elem["val"]] = (elem["timeout"], elem["expires"])
    return found


def prefixes(items: list[Any]) -> set[str]:
    """Set elements as CIDRs (nft lists a /32 as a bare address)."""
    return {
        f"{item['prefix']['addr']}/{item['prefix']['len']}" if isinstance(item, dict)
        else f"{item}/32"
        for item in items
    }  # fmt: skip


@needs_nft
def test_the_vm_table_without_an_allowlist_loads_exactly_as_written(netns_sandbox: int) -> None:
    doc = rules.vm_table(AllowList())
    rules.load(doc)
    assert tables_here() == ["inet pyro"]
    assert rules_here("pyro") == doc_rules(doc, "pyro")
    sets = sets_here("pyro")
    assert set(sets) == {"allow_net", "allow_dns", "blocked"}
    assert (sets["allow_net"]["flags"], sets["allow_dns"]["flags"]) == (["interval"], ["timeout"])
    assert "elem" not in sets["allow_net"] and "elem" not in sets["allow_dns"]
    assert prefixes(elements("pyro", "blocked")) == set(rules.BLOCKED)


@needs_nft
def test_plain_egress_forwards_everything_but_the_blocked_ranges(netns_sandbox: int) -> None:
    rules.load(rules.vm_table(AllowList()))
    egress = [expr for expr in rules_here("pyro")["forward"] if EGRESS in expr]
    assert len(egress) == 1 and egress[0][-1] == {"accept": None}


@needs_nft
def test_an_allowlist_fills_allow_net_and_drops_the_plain_egress_rule(netns_sandbox: int) -> None:
    allow = AllowList.parse(["example.com", "*.example.org", "203.0.113.9/24", "198.51.100.7"])
    doc = rules.vm_table(allow)
    rules.load(doc)
    assert rules_here("pyro") == doc_rules(doc, "pyro")
    assert prefixes(elements("pyro", "allow_net")) == {"203.0.113.0/24", "198.51.100.7/32"}
    assert not any(EGRESS in expr for expr in rules_here("pyro")["forward"])
    assert "elem" not in sets_here("pyro")["allow_dns"]  # names are the DNS forwarder's business


@needs_nft
def test_learned_addresses_enter_allow_dns_with_their_ttl(netns_sandbox: int) -> None:
    rules.load(rules.vm_table(AllowList.parse(["example.com"])))
    rules.load(rules.learned([("192.0.2.1", 300), ("192.0.2.2", 3600)]))
    found = timeouts()
    assert {ip: timeout for ip, (timeout, _) in found.items()} == {
        "192.0.2.1": 300,
        "192.0.2.2": 3600,
    }
    assert all(0 < expires <= timeout for timeout, expires in found.values())


@needs_nft
def test_learning_an_address_again_renews_its_timeout(netns_sandbox: int) -> None:
    rules.load(rules.vm_table(AllowList.parse(["example.com"])))
    rules.load(rules.learned([("192.0.2.1", 60), ("192.0.2.5", 60)]))
    # The same address again, beside a new one: nft must neither refuse the duplicate nor keep
    # the old timeout.
    rules.load(rules.learned([("192.0.2.1", 7200), ("192.0.2.9", 120)]))
    found = timeouts()
    assert {ip: t for ip, (t, _) in found.items()} == {
        "192.0.2.1": 7200, "192.0.2.5": 60, "192.0.2.9": 120,
    }  # fmt: skip
    assert found["192.0.2.1"][1] > 60  # expiry restarted from the new timeout


@needs_nft
def test_ttls_are_clamped_to_30_seconds_and_one_day(netns_sandbox: int) -> None:
    rules.load(rules.vm_table(AllowList.parse(["example.com"])))
    given = {"192.0.2.1": 0, "192.0.2.2": 29, "192.0.2.3": 30, "192.0.2.4": 86400,
             "192.0.2.5": 86401, "192.0.2.6": 10**7}  # fmt: skip
    rules.load(rules.learned(given.items()))
    assert {ip: t for ip, (t, _) in timeouts().items()} == {
        "192.0.2.1": 30, "192.0.2.2": 30, "192.0.2.3": 30,
        "192.0.2.4": 86400, "192.0.2.5": 86400, "192.0.2.6": 86400,
    }  # fmt: skip
    assert (rules.MIN_TTL_S, rules.MAX_TTL_S) == (30, 86400)


@needs_nft
def test_an_address_given_twice_at_once_is_learned_with_the_longer_ttl(netns_sandbox: int) -> None:
    rules.load(rules.vm_table(AllowList.parse(["example.com"])))
    rules.load(rules.learned([("192.0.2.1", 60), ("192.0.2.1", 300)]))
    assert {ip: t for ip, (t, _) in timeouts().items()} == {"192.0.2.1": 300}


@needs_nft
def test_nothing_learned_is_no_document_and_loads_nothing(netns_sandbox: int) -> None:
    assert rules.learned([]) == []
    rules.load([])  # not even an nft run: there is no table it could refer to
    assert ruleset_here() == []


@needs_nft
def test_reloading_the_vm_table_swaps_the_allowlist_and_forgets_learned_addresses(
    netns_sandbox: int,
) -> None:
    rules.load(rules.vm_table(AllowList.parse(["example.com", "203.0.113.0/24"])))
    rules.load(rules.learned([("192.0.2.1", 300)]))
    rules.load(rules.vm_table(AllowList.parse(["example.net", "198.51.100.0/25"])))
    assert tables_here() == ["inet pyro"]
    assert prefixes(elements("pyro", "allow_net")) == {"198.51.100.0/25"}
    assert elements("pyro", "allow_dns") == []
    rules.load(rules.vm_table(AllowList()))
    assert elements("pyro", "allow_net") == []
    assert any(EGRESS in expr for expr in rules_here("pyro")["forward"])


@needs_nft
def test_the_host_table_loads_as_written_and_again_without_duplicates(netns_sandbox: int) -> None:
    doc = rules.host_table()
    rules.load(doc)
    once = ruleset_here()
    assert tables_here() == ["inet pyro_host"]
    assert rules_here("pyro_host") == doc_rules(doc, "pyro_host")
    rules.load(rules.host_table())
    assert ruleset_here() == once
    assert sum(len(chain) for chain in rules_here("pyro_host").values()) == 4


@needs_nft
def test_the_host_table_leaves_other_tables_alone(netns_sandbox: int) -> None:
    # On a real host the shared table sits beside the host's own firewall.
    rules.load([{"add": {"table": {"family": "ip", "name": "hosts_own"}}}])
    rules.load(rules.host_table())
    rules.load(rules.host_table())
    assert tables_here() == ["inet pyro_host", "ip hosts_own"]


@needs_nft
def test_a_refused_document_raises_with_nfts_message_and_changes_nothing(
    netns_sandbox: int,
) -> None:
    rules.load(rules.vm_table(AllowList.parse(["192.0.2.0/24"])))
    before = ruleset_here()
    bogus = {"add": {"rule": {"family": "inet", "table": "pyro", "chain": "no_such_chain",
                              "expr": [{"accept": None}]}}}  # fmt: skip
    # The table's replacement comes first: a transaction refused later must undo it too.
    with pytest.raises(SystemFault) as caught:
        rules.load([*rules.vm_table(AllowList()), bogus])
    assert caught.value.message.startswith("nftables refused pyro's rules: ")
    assert "Could not process rule: No such file or directory" in caught.value.message
    assert caught.value.hint is not None and "pyro doctor" in caught.value.hint
    assert ruleset_here() == before


@needs_nft
def test_learning_into_a_namespace_without_the_vm_table_is_refused(netns_sandbox: int) -> None:
    with pytest.raises(SystemFault, match="nftables refused pyro's rules"):
        rules.load(rules.learned([("192.0.2.1", 300)]))
    assert ruleset_here() == []


@needs_nft
def test_rules_load_only_in_the_namespace_of_the_calling_thread(
    home_namespace_unchanged: None,
) -> None:
    home_rules = ruleset_here()
    with netns.throwaway_namespace() as ns, netns.entered(ns):
        rules.load(rules.vm_table(AllowList.parse(["192.0.2.0/24"])))
        rules.load(rules.learned([("198.51.100.1", 300)]))
        rules.load(rules.host_table())
        assert tables_here() == ["inet pyro", "inet pyro_host"]
    assert ruleset_here() == home_rules


def test_load_names_the_package_when_nft_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = tools.shutil.which

    def which(command: str, *args: Any, **kwargs: Any) -> str | None:
        return None if command == "nft" else real_which(command, *args, **kwargs)

    monkeypatch.setattr(tools.shutil, "which", which)
    with pytest.raises(HostRequirementError) as caught:
        rules.load(rules.vm_table(AllowList()))
    assert "`nft`" in caught.value.message
    assert caught.value.hint == "install them with: apt-get install -y nftables"


def test_set_elements_are_bare_addresses_for_single_hosts_and_prefixes_otherwise() -> None:
    doc = rules.vm_table(AllowList.parse(["198.51.100.7", "203.0.113.0/24"]))
    allow_net = next(c["add"]["set"] for c in doc if c.get("add", {}).get("set", {}).get(
        "name") == "allow_net")  # fmt: skip
    assert allow_net["elem"] == ["198.51.100.7", {"prefix": {"addr": "203.0.113.0", "len": 24}}]
    for cidr in rules.BLOCKED:  # the blocked ranges are networks, not mistyped hosts
        assert ipaddress.IPv4Network(cidr).prefixlen < 32


def test_only_public_addresses_are_learned() -> None:
    # An allowed name whose DNS someone else controls must not open metadata, LAN or loopback.
    answers = [("169.254.169.254", 60), ("10.0.0.5", 60), ("127.0.0.1", 60), ("192.0.2.7", 60)]
    doc = rules.learned(answers)
    assert [item["elem"]["val"] for item in doc[-1]["add"]["element"]["elem"]] == ["192.0.2.7"]
    assert rules.learned([("172.16.0.1", 60), ("100.64.1.1", 60)]) == []
