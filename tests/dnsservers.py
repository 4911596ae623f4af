"""Real DNS servers for the tests: Debian's ``unbound`` with local data, started in a
network namespace the test made (only ``lo`` exists there: nothing it does can leave
the machine), and a scripted responder for hostile answers.

The unbound zone gives every outcome for real:

    a.test.        A 192.0.2.1, AAAA 2001:db8::1 (ttl 300; a second A with ttl 60)
    nx.test. ...   any other name under test.: NXDOMAIN (a static local zone)
    big.test.      40 TXT records of 200 bytes: over any UDP size, so TC
    x.refused.test.  REFUSED (local-zone refuse)
    x.lame.        SERVFAIL: a stub zone whose only server is this unbound itself, which
                   refuses the non-recursive query ("allow", not "allow_snoop"): a lame
                   delegation, answered SERVFAIL within milliseconds
    anything else  REFUSED ("." is a refuse zone: no recursion anywhere)

``do-not-query-localhost: no`` lets unbound ask the lame stub on loopback;
``outgoing-interface: 127.0.0.1`` and the namespace keep every query it makes on lo.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

BIG_TXT = 40


def free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    """A UDP and TCP port free on ``host`` right now (run inside the namespace)."""
    with socket.socket(family, socket.SOCK_DGRAM) as u:
        u.bind((host, 0))
        port = int(u.getsockname()[1])
    with socket.socket(family, socket.SOCK_STREAM) as t:
        t.bind((host, port))
    return port


def unbound_conf(
    workdir: Path, port: int, interfaces: Sequence[str], automatic: bool = False
) -> str:
    """The config; ``automatic``: listen on the wildcard and answer from the address
    asked (interface-automatic, IP_PKTINFO), so every 127/8 address is a server."""
    lines = [
        "server:",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{workdir}"',
        '  pidfile: ""',
        "  use-syslog: no",
        f'  logfile: "{workdir}/unbound.log"',
        "  verbosity: 0",
        f"  port: {port}",
        *(["  interface-automatic: yes", "  interface: 0.0.0.0"] if automatic else []),
        *(f"  interface: {a}" for a in ([] if automatic else interfaces)),
        "  do-ip4: yes",
        "  do-ip6: yes",
        "  do-udp: yes",
        "  do-tcp: yes",
        "  access-control: 127.0.0.0/8 allow",
        "  access-control: ::1/128 allow",
        "  module-config: iterator",
        "  do-not-query-localhost: no",
        "  outgoing-interface: 127.0.0.1",
        "  num-threads: 1",
        "  so-reuseport: no",
        "  so-rcvbuf: 8m",
        "  so-sndbuf: 8m",
        "  msg-cache-size: 4m",
        "  rrset-cache-size: 4m",
        "  ratelimit: 0",
        "  ip-ratelimit: 0",
        "  unwanted-reply-threshold: 0",
        '  local-zone: "." refuse',
        '  local-zone: "test." static',
        '  local-data: "a.test. 300 IN A 192.0.2.1"',
        '  local-data: "a.test. 300 IN AAAA 2001:db8::1"',
        '  local-data: "two.test. 300 IN A 192.0.2.1"',
        '  local-data: "two.test. 60 IN A 192.0.2.2"',
        '  local-data: "a.test. 300 IN TXT \\"hello\\""',
        '  local-data: "test. 3600 IN SOA ns.test. admin.test. 1 3600 600 86400 60"',
        '  local-data: "test. 3600 IN NS ns.test."',
        '  local-data: "ns.test. 3600 IN A 127.0.0.1"',
        *(f'  local-data: "big.test. 300 IN TXT \\"{i:03d}{"x" * 197}\\""' for i in range(BIG_TXT)),
        '  local-zone: "refused.test." refuse',
        '  local-zone: "lame." transparent',
        "  infra-host-ttl: 1",
        "stub-zone:",
        '  name: "lame."',
        f"  stub-addr: 127.0.0.1@{port}",
        "  stub-prime: no",
        "remote-control:",
        "  control-enable: no",
    ]
    return "\n".join(lines) + "\n"


def ask(server: str, port: int, name: str, qtype: str = "A", timeout: float = 2.0) -> int:
    """One query with dnspython over UDP (in the caller's namespace): the rcode."""
    import dns.query

    q = dns.message.make_query(name, qtype)
    r = dns.query.udp(q, server, port=port, timeout=timeout)
    return int(r.rcode())


@contextlib.contextmanager
def unbound(
    ns: str, port: int, interfaces: Sequence[str] = ("127.0.0.1", "::1"), automatic: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """unbound in namespace ``ns`` on ``port`` of ``interfaces``, answering before the
    block runs; stopped afterwards (and its log shown if it failed to start)."""
    if shutil.which("unbound") is None:
        raise RuntimeError("unbound is not installed: apt-get install unbound")
    work = Path(tempfile.mkdtemp(prefix="fp-unbound-"))
    conf = work / "unbound.conf"
    conf.write_text(unbound_conf(work, port, interfaces, automatic))
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"unbound config: {check.stdout}{check.stderr}")
    p = subprocess.Popen(
        ["ip", "netns", "exec", ns, "unbound", "-d", "-c", str(conf)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_answering(ns, interfaces[0], port, p, work)
        yield p
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


def _wait_answering(ns: str, host: str, port: int, p: subprocess.Popen[str], work: Path) -> None:
    from privhelpers import in_netns

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if p.poll() is not None:
            log = (work / "unbound.log").read_text() if (work / "unbound.log").exists() else ""
            raise RuntimeError(f"unbound exited {p.returncode}: {log}")
        try:
            if in_netns(ns, lambda: ask(host, port, "a.test.", timeout=0.3)) == 0:
                return
        except Exception:  # not listening yet
            time.sleep(0.1)
    raise RuntimeError("unbound did not answer within 15 s")


def respond(
    query: bytes,
    *,
    rcode: int = 0,
    answers: Sequence[tuple[str, int, str, str]] = (),
    qname: str | None = None,
    qtype: str | None = None,
    qid: int | None = None,
    tc: bool = False,
) -> bytes:
    """A response to ``query`` made with dnspython: its answers (name, ttl, type, text),
    with the question, ID or TC flag changed on demand (hostile answers)."""
    import dns.flags
    import dns.rrset

    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.Rcode(rcode))
    for name, ttl, rtype, text in answers:
        r.answer.append(dns.rrset.from_text(name, ttl, "IN", rtype, text))
    if qname is not None or qtype is not None:
        old = q.question[0]
        r.question = [
            dns.rrset.RRset(
                dns.name.from_text(qname) if qname is not None else old.name,
                old.rdclass,
                dns.rdatatype.from_text(qtype) if qtype is not None else old.rdtype,
            )
        ]
    if qid is not None:
        r.id = qid
    if tc:
        r.flags |= dns.flags.TC
    return bytes(r.to_wire())
