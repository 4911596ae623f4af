"""The DNS codec of ``DnsSocket`` in pure Python: the query it sends and the response
parser it attributes answers with (``units/dns.pxi``), statement for statement, so
the tests hold the C code to this one on the same bytes (and this one to dnspython).

A query (RFC 1035 §4.1): a 12-byte header (ID, flags with RD when recursion is
desired, one question, an additional RR when EDNS0 is offered), the question name in
plain labels, QTYPE, QCLASS IN, then optionally the EDNS0 OPT RR (RFC 6891) offering
a UDP payload size.

A response is parsed when it is one (QR set, opcode QUERY), has exactly one
question whose name is a plain label sequence, and every RR of its three sections is
whole (owner name of labels ending in the root or in a pointer back before it, the
fixed fields, rdata within the message; an IN A of 4 bytes, an IN AAAA of 16) with no
byte after the last. A response with TC set is read as far as it goes. The rcode
carries the OPT RR's extended bits; ``min_ttl`` is the smallest TTL of the answer RRs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PARSE_OK = 0
PARSE_SHORT = 1  # shorter than a header
PARSE_NOT_RESPONSE = 2  # QR clear, or an opcode other than QUERY
PARSE_QDCOUNT = 3  # not exactly one question
PARSE_BAD_QUESTION = 4  # a question name that is no plain label sequence, or cut
PARSE_BAD_RECORDS = 5  # an RR cut or garbled (without TC), or bytes after the last

FLAG_QR = 0x8000
FLAG_TC = 0x0200
FLAG_RD = 0x0100
TYPE_A = 1
TYPE_AAAA = 28
TYPE_OPT = 41
CLASS_IN = 1
NAME_MAX = 255

QTYPES = {
    "A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "HINFO": 13, "MX": 15, "TXT": 16,
    "AAAA": 28, "SRV": 33, "NAPTR": 35, "DS": 43, "RRSIG": 46, "DNSKEY": 48, "SVCB": 64,
    "HTTPS": 65, "CAA": 257, "ANY": 255,
}  # fmt: skip
RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS",
}  # fmt: skip


@dataclass(frozen=True)
class Response:
    """What the parser reads from a response (the C parser's fields, one for one)."""

    id: int
    flags: int
    rcode: int
    qname: bytes  # wire form, root label included
    qtype: int
    qclass: int
    answers: int  # complete RRs read from the answer section
    min_ttl: int | None  # smallest TTL among them; None: no answer RR
    truncated: bool

    def as_tuple(self) -> tuple[int, int, int, bytes, int, int, int, int | None, bool]:
        return (self.id, self.flags, self.rcode, self.qname, self.qtype, self.qclass,
                self.answers, self.min_ttl, self.truncated)  # fmt: skip


def qtype_number(qtype: str | int) -> int:
    """The QTYPE number of a name (A, AAAA, NS, MX, TXT, SOA, ANY...), TYPEnnn or an int."""
    if isinstance(qtype, str):
        q = qtype.strip().upper()
        if q in QTYPES:
            return QTYPES[q]
        if q.startswith("TYPE") and q[4:].isdigit() and 1 <= int(q[4:]) <= 65535:
            return int(q[4:])
        raise ValueError(
            f"unknown DNS query type {qtype!r}: use one of {', '.join(sorted(QTYPES))}, or TYPEnnn"
        )
    if not 1 <= qtype <= 65535:
        raise ValueError(f"qtype {qtype} is not 1..65535")
    return qtype


def name_wire(name: str) -> bytes:
    """``name`` ("example.com", "example.com." or ".") as wire labels ending in the root."""
    s = name.strip()
    if s in ("", "."):
        return b"\x00"
    s = s.removesuffix(".")
    if not s.isascii():
        raise ValueError(f"DNS name {name!r} is not ASCII: give its A-label (xn--) form")
    out = bytearray()
    for label in s.split("."):
        if not label:
            raise ValueError(f"DNS name {name!r} has an empty label")
        if len(label) > 63:
            raise ValueError(f"DNS name {name!r}: label {label[:20]!r}... is over 63 bytes")
        if any(c <= " " or c == "\x7f" for c in label):
            raise ValueError(f"DNS name {name!r} holds a space or control character")
        out.append(len(label))
        out += label.encode("ascii")
    out.append(0)
    if len(out) > NAME_MAX:
        raise ValueError(f"DNS name {name!r} is {len(out)} bytes on the wire, over 255")
    return bytes(out)


def name_text(wire: bytes) -> str:
    """The text form ("example.com." / ".") of a wire name of plain labels."""
    parts = []
    i = 0
    while i < len(wire) and wire[i]:
        parts.append(wire[i + 1 : i + 1 + wire[i]].decode("ascii", "backslashreplace"))
        i += 1 + wire[i]
    return ".".join(parts) + "."


def build_query(qid: int, name: str, qtype: str | int = "A", *, rd: bool = True,
                edns: int = 1232) -> bytes:  # fmt: skip
    """The query DnsSocket sends with ID ``qid`` (``edns`` 0: no OPT RR)."""
    wire = name_wire(name)
    head = struct.pack("!HHHHHH", qid, FLAG_RD if rd else 0, 1, 0, 0, 1 if edns else 0)
    out = head + wire + struct.pack("!HH", qtype_number(qtype), CLASS_IN)
    if edns:
        out += b"\x00" + struct.pack("!HHIH", TYPE_OPT, edns, 0, 0)
    return out


def _question(p: bytes, off: int) -> int:
    """End of the plain-label question name at ``off``, or -1."""
    start = off
    n = len(p)
    while True:
        if off >= n:
            return -1
        ln = p[off]
        if ln == 0:
            return off + 1
        if ln > 63:
            return -1
        off += 1 + ln
        if off - start > NAME_MAX - 1:
            return -1


def _skip_name(p: bytes, off: int) -> int:
    """End of the RR owner name at ``off``, or -1."""
    start = off
    n = len(p)
    while True:
        if off >= n:
            return -1
        ln = p[off]
        if ln == 0:
            return off + 1
        if ln & 0xC0 == 0xC0:
            if off + 2 > n:
                return -1
            if ((ln & 0x3F) << 8) | p[off + 1] >= start:
                return -1
            return off + 2
        if ln > 63:
            return -1
        off += 1 + ln
        if off - start > NAME_MAX - 1:
            return -1


def _rr(p: bytes, off: int) -> tuple[int, int, int]:
    """(end, type, ttl) of the RR at ``off``; end -1 when cut or garbled."""
    off = _skip_name(p, off)
    if off < 0 or off + 10 > len(p):
        return -1, 0, 0
    rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", p, off)
    off += 10
    if off + rdlen > len(p):
        return -1, 0, 0
    if rclass == CLASS_IN and (
        (rtype == TYPE_A and rdlen != 4) or (rtype == TYPE_AAAA and rdlen != 16)
    ):
        return -1, 0, 0
    return off + rdlen, rtype, ttl


def parse_response(data: bytes) -> tuple[int, Response | None]:
    """(PARSE_OK, the response) or (the PARSE_* reason it is not one, None)."""
    p = bytes(data)
    if len(p) < 12:
        return PARSE_SHORT, None
    qid, flags, qd, an, au, ad = struct.unpack_from("!HHHHHH", p, 0)
    if not flags & FLAG_QR or (flags >> 11) & 0xF:
        return PARSE_NOT_RESPONSE, None
    tc = bool(flags & FLAG_TC)
    rcode = flags & 0xF
    if qd != 1:
        return PARSE_QDCOUNT, None
    off = _question(p, 12)
    if off < 0 or off + 4 > len(p):
        return PARSE_BAD_QUESTION, None
    qname = p[12:off]
    qtype, qclass = struct.unpack_from("!HH", p, off)
    off += 4
    answers = 0
    min_ttl: int | None = None
    opt_seen = False
    cut = False
    for i in range(an + au + ad):
        off, rtype, ttl = _rr(p, off)
        if off < 0:
            cut = True
            break
        if i < an:
            answers += 1
            min_ttl = ttl if min_ttl is None else min(min_ttl, ttl)
        elif i >= an + au and rtype == TYPE_OPT and not opt_seen:
            opt_seen = True
            rcode |= (ttl >> 24) << 4
    if (cut or off != len(p)) and not tc:
        return PARSE_BAD_RECORDS, None
    return PARSE_OK, Response(qid, flags, rcode, qname, qtype, qclass, answers, min_ttl, tc)


def outcome(resp: Response) -> str:
    """The DNS outcome of a response that answered a probe: truncated (TC), noerror,
    nxdomain, servfail, refused, or rcode (another rcode)."""
    if resp.truncated:
        return "truncated"
    return {0: "noerror", 3: "nxdomain", 2: "servfail", 5: "refused"}.get(resp.rcode, "rcode")


# -- the answer byte: how a DNS probe's rcode and TC bit travel through the engine, the
# outcome log and the store, in the TTL field of a reply (a DNS reply's IP TTL says
# nothing; units/dns.pxi _dq_answer_code writes it)
ANSWER_TC = 0x80
RCODE_MAX = 126  # rcodes above it (none are assigned) are kept as 126


def answer_code(rcode: int, truncated: bool = False) -> int:
    """The byte of an answer with ``rcode`` (and TC): 1 + rcode, | 0x80 for TC; never 0
    (0 is "no answer" in the log's TTL column)."""
    return (1 + min(max(rcode, 0), RCODE_MAX)) | (ANSWER_TC if truncated else 0)


def read_answer_code(code: int | None) -> tuple[int, bool] | None:
    """(rcode, truncated) of an answer byte; None for 0 / None (no answer recorded)."""
    if not code or not 0 < code <= 255 or code & 0x7F == 0:
        return None
    return (code & 0x7F) - 1, bool(code & ANSWER_TC)


def rcode_name(rcode: int) -> str:
    """NOERROR, NXDOMAIN, ... or RCODEnn for one without a name here."""
    return RCODES.get(rcode, f"RCODE{rcode}")
