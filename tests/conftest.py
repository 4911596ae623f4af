from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastping.results import SlotStats

ROOT = os.geteuid() == 0
SRC = str(Path(__file__).resolve().parent.parent / "src")

needs_root = pytest.mark.skipif(not ROOT, reason="needs root / CAP_NET_RAW for raw ICMP sockets")


@pytest.fixture(params=["cython", "python"])
def codec(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The same cases against the compiled codec and its pure-Python twin."""
    if request.param == "cython":
        from fastping import _icmp

        return _icmp
    from fastping import _icmp_py

    return _icmp_py


def slot_counts(st: SlotStats) -> dict[str, int]:
    """A slot's non-zero counts (SlotStats' sent .. send_errors) by field name: what a
    test compares instead of the tuple's first eight positions."""
    return {f: n for f in SlotStats._fields[:8] if (n := getattr(st, f))}


def fastping_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastping.cli", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Netns:
    """Two namespaces joined by a veth pair, made and removed by the test:
    ``host`` (10.201.0.2/24, default route via the router) and ``router``
    (10.201.0.1/24). Only these addresses, inside these namespaces, are probed."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.host = f"fpt-h-{tag}"
        self.router = f"fpt-r-{tag}"
        self.veth_h = f"fph{tag}"
        self.veth_r = f"fpr{tag}"

    def up(self) -> None:
        ip("netns", "add", self.host)
        ip("netns", "add", self.router)
        ip("link", "add", self.veth_h, "type", "veth", "peer", "name", self.veth_r)
        ip("link", "set", self.veth_h, "netns", self.host)
        ip("link", "set", self.veth_r, "netns", self.router)
        self.exec_h("ip", "addr", "add", "10.201.0.2/24", "dev", self.veth_h)
        self.exec_r("ip", "addr", "add", "10.201.0.1/24", "dev", self.veth_r)
        for ns, dev in ((self.host, self.veth_h), (self.router, self.veth_r)):
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        self.exec_h("ip", "route", "add", "default", "via", "10.201.0.1")
        self.exec_r("sysctl", "-qw", "net.ipv4.ip_forward=1")
        # ICMP errors are rate-limited per destination; tests need each one
        self.exec_r("sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")

    def down(self) -> None:
        ip("netns", "del", self.host, check=False)
        ip("netns", "del", self.router, check=False)

    def exec_h(self, *cmd: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return subprocess.run(
            ["ip", "netns", "exec", self.host, *cmd],
            check=kw.pop("check", True),
            capture_output=True,
            text=True,
            env=child_env(),
            **kw,
        )

    def exec_r(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.router, *cmd], check=True, capture_output=True, text=True
        )

    def reject_beyond_router(self, cidr: str) -> None:
        """Route ``cidr`` from the router back towards the host and have the router
        answer every probe to it with host unreachable (nftables: a route of type
        unreachable would be rate-limited per peer by the kernel's ip_error)."""
        self.exec_r(
            "nft",
            "add table ip fpt; add chain ip fpt fpfwd { type filter hook forward "
            f"priority 0; }}; add rule ip fpt fpfwd ip daddr {cidr} reject with icmp "
            "type host-unreachable",
        )
        self.exec_r("ip", "route", "add", cidr, "via", "10.201.0.2")


@pytest.fixture
def netns() -> Iterator[Netns]:
    if not ROOT:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (apt-get install iproute2)")
    n = Netns()
    try:
        n.up()
        yield n
    finally:
        n.down()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (CI=true) a skipped test fails the run: there a skip means a missing
    install step (an apt package, root), not a test that does not apply."""
    if os.environ.get("CI") != "true":
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = tr.stats.get("skipped", []) if tr is not None else []
    if skipped:
        reasons = sorted({str(r.longrepr[-1]) if isinstance(r.longrepr, tuple) else str(r.longrepr)
                          for r in skipped})  # fmt: skip
        sys.stderr.write(
            f"\nCI=true: {len(skipped)} test(s) skipped, which CI counts as a failure "
            "(a missing install step in .ci/run?):\n" + "".join(f"  {x}\n" for x in reasons)
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
