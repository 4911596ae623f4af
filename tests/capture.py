"""An independent observer for RTT truth tests: tcpdump on a namespace's ``lo`` with
nanosecond timestamps, and a reader of the pcap it writes that pairs each echo
request with its reply (by address, identifier and sequence number).

The capture's gap between a request and its reply is the wire's RTT; what fastping
reports for the same probe is compared against it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PCAP_NS_MAGIC = 0xA1B23C4D  # pcap with nanosecond timestamps (--time-stamp-precision=nano)
LINKTYPE_ETHERNET = 1  # what lo reports
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINK_HDR = {LINKTYPE_ETHERNET: 14, LINKTYPE_LINUX_SLL: 16, LINKTYPE_LINUX_SLL2: 20}


def packets(path: Path) -> Iterator[tuple[int, bytes]]:
    """(t_ns, packet from its IP header on) for every packet of a nanosecond pcap."""
    data = path.read_bytes()
    if len(data) < 24:
        raise ValueError(f"{path}: not a pcap file ({len(data)} bytes)")
    (magic,) = struct.unpack_from("<I", data, 0)
    if magic != PCAP_NS_MAGIC:
        raise ValueError(f"{path}: pcap magic {magic:#x}, want nanosecond pcap")
    (link,) = struct.unpack_from("<I", data, 20)
    skip = LINK_HDR[link]
    off = 24
    while off + 16 <= len(data):
        sec, nsec, incl, _orig = struct.unpack_from("<IIII", data, off)
        off += 16
        pkt = data[off + skip : off + incl]
        off += incl
        if pkt:
            yield sec * 1_000_000_000 + nsec, pkt


def read_echoes(path: Path) -> list[tuple[str, str, int, int, int]]:
    """(kind, address, ident, seq, t_ns) for every ICMP/ICMPv6 echo request ("req",
    address = its destination) and echo reply ("rep", address = its source)."""
    out: list[tuple[str, str, int, int, int]] = []
    for t, pkt in packets(path):
        if pkt[0] >> 4 == 4 and len(pkt) >= 28 and pkt[9] == socket.IPPROTO_ICMP:
            ihl = (pkt[0] & 15) * 4
            typ = pkt[ihl]
            ident, seq = struct.unpack_from("!HH", pkt, ihl + 4)
            if typ == 8:
                out.append(("req", socket.inet_ntop(socket.AF_INET, pkt[16:20]), ident, seq, t))
            elif typ == 0:
                out.append(("rep", socket.inet_ntop(socket.AF_INET, pkt[12:16]), ident, seq, t))
        elif pkt[0] >> 4 == 6 and len(pkt) >= 48 and pkt[6] == socket.IPPROTO_ICMPV6:
            typ = pkt[40]
            ident, seq = struct.unpack_from("!HH", pkt, 44)
            if typ == 128:
                out.append(("req", socket.inet_ntop(socket.AF_INET6, pkt[24:40]), ident, seq, t))
            elif typ == 129:
                out.append(("rep", socket.inet_ntop(socket.AF_INET6, pkt[8:24]), ident, seq, t))
    return out


def wire_rtts(path: Path) -> dict[tuple[str, int], list[int]]:
    """(address, seq) -> the wire's request-to-reply gaps in ns, one per probe (the
    first reply to each request; several when one address and seq were probed by
    several sockets, which the tests avoid)."""
    sent: dict[tuple[str, int, int], int] = {}
    out: dict[tuple[str, int], list[int]] = {}
    for kind, addr, ident, seq, t in read_echoes(path):
        key = (addr, ident, seq)
        if kind == "req":
            sent.setdefault(key, t)
        elif key in sent:
            out.setdefault((addr, seq), []).append(t - sent.pop(key))
    return out


@contextlib.contextmanager
def tcpdump(
    netns: str,
    pcap: Path,
    *,
    icmp6: bool = False,
    tcp: bool = False,
    udp: bool = False,
    iface: str = "lo",
    sentinel: str | None = None,
) -> Iterator[None]:
    """Capture ICMP (or ICMPv6, or with ``tcp`` TCP, with ``udp`` UDP and the ICMP
    errors about it) on ``lo`` of ``netns`` into
    ``pcap`` while the block runs; waits until tcpdump is listening, and checks
    afterwards that the kernel dropped nothing from the capture (a capture with
    holes proves nothing)."""
    cmd = [
        "ip", "netns", "exec", netns, "tcpdump", "-i", iface, "-n", "-U", "-w", str(pcap),
        "-B", "262144", "--immediate-mode", "--time-stamp-precision=nano", "-s", "128",
        "tcp" if tcp else "udp or icmp" if udp else "icmp6" if icmp6 else "icmp",
    ]  # fmt: skip
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    line = p.stderr.readline()
    if "listening on" not in line:
        p.kill()
        raise RuntimeError(f"tcpdump did not start: {line!r}")
    # it says so a moment before its ring is attached: until a sentinel echo (to an
    # address no test probes) shows in the file, packets sent would be missed
    sentinel = sentinel or ("::1" if icmp6 else "127.0.0.1")
    deadline = time.monotonic() + 10
    while pcap.stat().st_size <= 24 if pcap.exists() else True:
        if time.monotonic() > deadline:
            p.kill()
            raise RuntimeError("tcpdump captured nothing within 10 s")
        if tcp:  # a connect() to a closed port: a SYN and its RST
            subprocess.run(["ip", "netns", "exec", netns, "bash", "-c",
                            "exec 3<>/dev/tcp/127.0.0.1/1"], capture_output=True)  # fmt: skip
        elif udp:  # a datagram to a closed port: it and its port unreachable
            subprocess.run(["ip", "netns", "exec", netns, "bash", "-c",
                            "echo x > /dev/udp/127.0.0.1/9"], capture_output=True)  # fmt: skip
        else:
            subprocess.run(["ip", "netns", "exec", netns, "ping", "-c1", "-W1", "-q", sentinel],
                           capture_output=True)  # fmt: skip
        time.sleep(0.1)
    try:
        yield
    finally:
        # --immediate-mode: packets reach the file as they come, not a ring block later
        # (without it the last second of a capture is lost at SIGTERM)
        time.sleep(0.5)
        p.terminate()
        err = p.stderr.read()
        p.wait(timeout=30)
    dropped = [ln for ln in err.splitlines() if "dropped by kernel" in ln]
    assert dropped and dropped[0].split()[0] == "0", f"tcpdump lost packets: {err!r}"


@contextlib.contextmanager
def observed_netns(
    prefix: str, v6_local: str, *, sysctls: tuple[str, ...] = (), nft_rules: str | None = None
) -> Iterator[str]:
    """A namespace of the test's own for truth tests: ``lo`` up, ``v6_local`` (a /112)
    answered by its kernel as 127/8 is, the given sysctls and nftables rules; deleted
    afterwards."""
    import uuid

    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        run = ["ip", "netns", "exec", name]
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run([*run, "ip", "-6", "route", "add", "local", v6_local, "dev", "lo"],
                       check=True)  # fmt: skip
        for kv in sysctls:
            subprocess.run([*run, "sysctl", "-qw", kv], check=True)
        if nft_rules is not None:
            subprocess.run([*run, "nft", "-f", "-"], input=nft_rules, text=True, check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def syn_rtts(path: Path) -> dict[int, int]:
    """Initial sequence number of each SYN -> the wire's gap to the first SYN-ACK or
    RST acknowledging it (IPv4 on lo)."""
    sent: dict[int, int] = {}
    out: dict[int, int] = {}
    for t, pkt in packets(path):
        if len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != socket.IPPROTO_TCP:
            continue
        ihl = (pkt[0] & 15) * 4
        seq, ack = struct.unpack_from("!II", pkt, ihl + 4)
        flags = pkt[ihl + 13]
        if flags & 0x12 == 0x02:  # SYN
            sent.setdefault(seq, t)
        elif flags & 0x10 and flags & 0x06:  # SYN-ACK or RST+ACK
            isn = (ack - 1) & 0xFFFFFFFF
            if isn in sent and isn not in out:
                out[isn] = t - sent[isn]
    return out


def udp_rtts(path: Path, sport: int) -> dict[tuple[int, int], int]:
    """(slot, serial) of each UDP probe sent from ``sport`` (its payload's probe
    header) -> the wire's gap to the first answer naming it: a datagram back to
    ``sport`` carrying the same header, or an ICMP error quoting the probe (IPv4 on
    lo)."""
    sent: dict[tuple[int, int], int] = {}
    out: dict[tuple[int, int], int] = {}
    for t, pkt in packets(path):
        if len(pkt) < 28 or pkt[0] >> 4 != 4:
            continue
        ihl = (pkt[0] & 15) * 4
        if pkt[9] == socket.IPPROTO_UDP:
            sp, dp = struct.unpack_from("!HH", pkt, ihl)
            key = struct.unpack_from("!II", pkt, ihl + 8) if len(pkt) >= ihl + 16 else None
            if key is None:
                continue
            if sp == sport:
                sent.setdefault(key, t)
            elif dp == sport and key in sent and key not in out:
                out[key] = t - sent[key]
        elif pkt[9] == socket.IPPROTO_ICMP and pkt[ihl] == 3 and len(pkt) >= ihl + 8 + 20:
            q = ihl + 8
            qihl = (pkt[q] & 15) * 4
            if len(pkt) < q + qihl + 16 or pkt[q + 9] != socket.IPPROTO_UDP:
                continue
            (sp,) = struct.unpack_from("!H", pkt, q + qihl)
            key = struct.unpack_from("!II", pkt, q + qihl + 8)
            if sp == sport and key in sent and key not in out:
                out[key] = t - sent[key]
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..1)."""
    if not sorted_values:
        raise ValueError("no values")
    k = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]
