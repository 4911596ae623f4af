from __future__ import annotations

import socket

import pytest

from fastping.errors import TargetError
from fastping.targets import Address, Name, V4Range, parse_target, parse_targets, resolve


def test_addresses_names_blocks_and_ranges() -> None:
    assert parse_target("127.0.0.1") == [Address("127.0.0.1", "127.0.0.1", socket.AF_INET)]
    assert parse_target("::1") == [Address("::1", "::1", socket.AF_INET6)]
    assert parse_target("localhost") == [Name("localhost")]
    assert parse_target("127.1.0.0/16") == [V4Range(0x7F010000, 65536)]
    assert parse_target("127.0.0.5-9") == [V4Range(0x7F000005, 5)]
    assert parse_target("127.0.0.250-127.0.1.5") == [V4Range(0x7F0000FA, 12)]
    assert len(parse_targets(["::1/126"])) == 4


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "-f",
        "; rm -rf /",
        "1.2.3.4.5",
        "300.0.0.1",
        "1.2.3.4/33",
        "::/64",
        "127.0.0.9-127.0.0.1",
        "127.0.0.1-::1",
        "a..b",
        "foo bar",
        "127.0.0.1-300",
    ],
)
def test_malformed_targets_raise_target_error(bad: str) -> None:
    with pytest.raises(TargetError):
        parse_target(bad)


def test_failed_resolution_is_a_value_not_an_exception() -> None:
    r = resolve(["localhost", "no-such-host.invalid"])
    assert r["localhost"][0] in ("127.0.0.1", "::1")
    assert isinstance(r["no-such-host.invalid"], str)
