"""dgram vs raw (vs the system ping) probes/s, measured in the same run.

    PYTHONPATH=src python -m pytest benchmarks/bench_modes.py --benchmark-only \
        --benchmark-group-by=param:n_targets

Runs as root inside a network namespace it creates (loopback only): there
``net.ipv4.ping_group_range`` can be opened for root's group without touching
the host's sysctl. Each round sweeps N loopback addresses once; the probes/s of
every round is kept in ``extra_info`` (pytest-benchmark's JSON) and printed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fastping  # noqa: E402
from privhelpers import in_netns, netns, set_range  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, raw sockets)")

# 127.0.0.0/8 all answers on lo; /22 = 1024, /18 = 16384 addresses.
SIZES = {1024: "127.10.0.0/22", 16384: "127.20.0.0/18"}


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    with netns() as name:
        set_range(name, "0 0")  # the namespace is deleted afterwards: nothing to restore
        yield name


def _sweep(ns: str, block: str, mode: str) -> Any:
    return in_netns(ns, lambda: fastping.sweep(block, mode=mode, rate_pps=0, timeout_s=1.0))


@pytest.mark.parametrize("n_targets", sorted(SIZES))
@pytest.mark.parametrize("mode", ["raw", "dgram"])
def test_sweep_probes_per_s(benchmark: Any, ns: str, mode: str, n_targets: int) -> None:
    rates: list[float] = []

    def run() -> Any:
        res = _sweep(ns, SIZES[n_targets], mode)
        rates.append(res.probes_per_s)
        return res

    res = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert res.sent == n_targets
    assert res.received >= 0.99 * n_targets, res.summary()
    rates.sort()
    benchmark.extra_info.update(
        mode=mode, n_targets=n_targets, probes_per_s_median=rates[len(rates) // 2],
        received=res.received, rx_drops=res.totals.get("rx_drops", 0),
    )  # fmt: skip
    print(f"\n{mode:6} {n_targets:6} targets: median {rates[len(rates) // 2]:,.0f} probes/s")


@pytest.mark.skipif(not os.path.exists("/usr/bin/ping"), reason="no system ping")
def test_subprocess_probes_per_s(benchmark: Any, ns: str) -> None:
    # one process per target: 64 targets is plenty to show the cost
    res = benchmark.pedantic(
        lambda: _sweep(ns, "127.30.0.0/26", "subprocess"), rounds=3, iterations=1
    )
    assert res.received == 64
    benchmark.extra_info.update(mode="subprocess", n_targets=64,
                                probes_per_s=res.probes_per_s)  # fmt: skip
    print(f"\nsubprocess 64 targets: {res.probes_per_s:,.0f} probes/s")
