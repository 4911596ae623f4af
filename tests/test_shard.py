"""--shard i/n: shards of a list partition it exactly, and stay put as the list grows."""

from __future__ import annotations

import collections
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastping.errors import ConfigError
from fastping.shard import jump_hash, parse_shard, select, shard_of, target_key

hosts = st.lists(
    st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,2}", fullmatch=True),
    ),
    unique=True,
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(targets=hosts, n=st.integers(1, 40))
def test_shards_partition_the_list_exactly(targets: list[str], n: int) -> None:
    parts = [select(targets, (i, n)) for i in range(n)]
    flat = [t for p in parts for t in p]
    assert sorted(flat) == sorted(targets)  # no gap
    assert len(flat) == len(set(flat))  # no overlap
    for p in parts:  # each agent keeps the list's order
        assert p == [t for t in targets if t in set(p)]


@settings(max_examples=100, deadline=None)
@given(targets=hosts, more=hosts, n=st.integers(1, 40))
def test_a_target_stays_on_its_agent_when_others_join(
    targets: list[str], more: list[str], n: int
) -> None:
    before = {t: i for i in range(n) for t in select(targets, (i, n))}
    grown = targets + [m for m in more if m not in before]
    after = {t: i for i in range(n) for t in select(grown, (i, n))}
    assert all(after[t] == before[t] for t in targets)


@settings(max_examples=100, deadline=None)
@given(key=st.integers(0, 2**64 - 1), n=st.integers(1, 1000))
def test_jump_hash_moves_a_key_only_to_the_new_bucket(key: int, n: int) -> None:
    a, b = jump_hash(key, n), jump_hash(key, n + 1)
    assert 0 <= a < n
    assert b == a or b == n  # consistent: growing n only ever moves keys to the new agent


def test_stable_known_values_and_no_process_hash() -> None:
    # fixed across machines, runs and PYTHONHASHSEED: sha1, not hash()
    assert target_key("127.0.0.1") == int.from_bytes(
        bytes.fromhex("4b84b15bff6ee5796152495a230e45e3d7e947d9")[:8], "big"
    )
    assert shard_of("Example.COM ", 7) == shard_of("example.com", 7)  # DNS is case-insensitive
    assert jump_hash(0, 1) == 0


def test_even_spread_and_few_moves_when_an_agent_joins() -> None:
    addrs = [str(ipaddress.IPv4Address(0x0A000000 + i)) for i in range(20000)]
    counts = collections.Counter(shard_of(a, 4) for a in addrs)
    assert set(counts) == {0, 1, 2, 3}
    assert all(abs(c - 5000) < 300 for c in counts.values()), counts
    moved = sum(shard_of(a, 4) != shard_of(a, 5) for a in addrs)
    assert 0.15 < moved / len(addrs) < 0.25  # ~1/5 move (to the new agent); modulo moves ~4/5


@pytest.mark.parametrize(
    ("text", "expect"),
    [("0/1", (0, 1)), ("3/4", (3, 4)), (" 1 / 2 ", (1, 2))],
)
def test_parse_shard(text: str, expect: tuple[int, int]) -> None:
    assert parse_shard(text) == expect


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("4/4", "needs 0 <= I < N"),
        ("1/0", "needs 0 <= I < N"),
        ("half", 'use "I/N"'),
        ("-1/2", 'use "I/N"'),
        ("1/2/3", 'use "I/N"'),
    ],
)
def test_bad_shard_says_what_to_do(text: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        parse_shard(text)
