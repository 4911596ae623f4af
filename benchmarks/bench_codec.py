"""Codec speed per packet: the compiled core against its pure-Python twin, same run.

The socket loop builds and parses packets in C over whole batches; build_probes /
parse_probes expose exactly that per-packet work (one call per 1,000 packets),
so Python call overhead is not what is measured. Goal: >= 30x the twin.
Run: pytest benchmarks/bench_codec.py --benchmark-only
"""

from __future__ import annotations

import socket
import time

import pytest

from conftest import report
from fastping import _icmp, _icmp_py

KEY = bytes(range(16))
N = 1000
V4 = socket.AF_INET
PKT = _icmp.build_probes(V4, 7, KEY, 0, N, 3, 56)


def _ns_per_packet(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - t) / N)
    return best


@pytest.mark.parametrize("impl", ["cython", "python"])
def test_build_and_checksum(benchmark, impl: str) -> None:  # type: ignore[no-untyped-def]
    mod = _icmp if impl == "cython" else _icmp_py
    benchmark.group = "codec build+checksum (1000 packets)"
    out = benchmark(mod.build_probes, V4, 7, KEY, 0, N, 3, 56)
    assert out == PKT


@pytest.mark.parametrize("impl", ["cython", "python"])
def test_parse(benchmark, impl: str) -> None:  # type: ignore[no-untyped-def]
    mod = _icmp if impl == "cython" else _icmp_py
    benchmark.group = "codec parse+cookie (1000 packets)"
    out = benchmark(mod.parse_probes, PKT, 64, V4, False, KEY)
    assert len(out) == N


def test_codec_ratio_same_run(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Both twins timed back to back; the ratio is what the issue asks for."""
    benchmark.group = "codec ratio"
    c_build = _ns_per_packet(lambda: _icmp.build_probes(V4, 7, KEY, 0, N, 3, 56), 200)
    p_build = _ns_per_packet(lambda: _icmp_py.build_probes(V4, 7, KEY, 0, N, 3, 56), 5)
    c_parse = _ns_per_packet(lambda: _icmp.parse_probes(PKT, 64, V4, False, KEY), 200)
    p_parse = _ns_per_packet(lambda: _icmp_py.parse_probes(PKT, 64, V4, False, KEY), 5)
    # single calls, for reference: Python call overhead included
    t = time.perf_counter_ns()
    for _ in range(N):
        _icmp.checksum(_icmp.build_echo_request(V4, 1, 2, PKT[8:64]))
    c_call = (time.perf_counter_ns() - t) / N
    t = time.perf_counter_ns()
    for _ in range(N):
        _icmp_py.checksum(_icmp_py.build_echo_request(V4, 1, 2, PKT[8:64]))
    p_call = (time.perf_counter_ns() - t) / N
    benchmark.extra_info.update(
        build_ns=c_build,
        build_py_ns=p_build,
        parse_ns=c_parse,
        parse_py_ns=p_parse,
        build_ratio=p_build / c_build,
        parse_ratio=p_parse / c_parse,
    )
    report(
        f"codec build+checksum: {c_build:.1f} ns/packet vs twin {p_build:.0f} ns "
        f"-> {p_build / c_build:.0f}x"
    )
    report(
        f"codec parse+cookie:   {c_parse:.1f} ns/packet vs twin {p_parse:.0f} ns "
        f"-> {p_parse / c_parse:.0f}x"
    )
    report(
        f"single-call build+checksum (Python call overhead included): {c_call:.0f} ns vs "
        f"{p_call:.0f} ns -> {p_call / c_call:.1f}x"
    )
    benchmark.pedantic(lambda: None, rounds=1)
