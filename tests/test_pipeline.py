"""The pipeline (fastping._pipeline): targets in, result lines out.

The compiled parser is checked against the reference parser (fastping.targets) on
a file with every kind of line and every kind of mistake; the compiled formatters
against the Python ones (fastping.formats, the old sweep formatting) byte for
byte, on crafted core rows (IPv4 and IPv6, rounding ties, errors) and on a real
sweep of loopback.
"""

from __future__ import annotations

import io
import json
import random
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import child_env, fastping_cmd, needs_root
from fastping import _pipeline as pl
from fastping import api, formats
from fastping.results import SlotStats
from fastping.targets import Address, Name, V4Range, parse_target

# includes/slotrow.pxd: ... senderr, closed (9 uint32), 4 uint8, port (uint16), addr, router,
# proto (uint8)
ROW = struct.Struct("<4qd9I4BH16s16sB5x")


def test_row_layout_matches_the_core() -> None:
    assert ROW.size == pl.ROW_SIZE


# ---------------------------------------------------------------- targets
EVERY_KIND = """\
# a comment line
127.0.0.1
   127.0.0.2\t# indented, with a comment after
::1
0:0:0:0:0:0:0:1
::ffff:127.0.0.1
fe80::1%lo

127.0.1.0/30
127.0.2.250-127.0.3.1
127.0.4.5-7
::1/127
::1-::1
localhost
127.0.0.3 127.0.0.4 ::1   # several on one line
127.0.0.5\r
127.0.0.6"""  # no newline at the end


def reference(text: str) -> list[tuple[str, str | None]]:
    """(target label, address) per host as the old Python path makes them (names: None)."""
    out: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        for word in line.split("#", 1)[0].split():
            for s in parse_target(word):
                if isinstance(s, V4Range):
                    for i in range(s.count):
                        a = socket.inet_ntop(socket.AF_INET, (s.first + i).to_bytes(4, "big"))
                        out.append((a, a))
                elif isinstance(s, Address):
                    canon = socket.inet_ntop(s.family, socket.inet_pton(s.family, s.address))
                    out.append((s.label, canon))
                else:
                    assert isinstance(s, Name)
                    out.append((s.name, None))
    return out


def parse(text: str | bytes, name: str = "t.txt") -> pl.TargetSet:
    ts = pl.TargetSet()
    ts.add_file(io.BytesIO(text.encode() if isinstance(text, str) else text), name)
    return ts


def test_every_kind_of_line_means_what_the_reference_parser_says() -> None:
    ts = parse(EVERY_KIND)
    assert ts.n_errors == 0 and ts.fatal is None, ts.errors
    ref = reference(EVERY_KIND)
    assert ts.n_hosts == len(ref)
    assert ts.address_strings() == [lab for lab, _ in ref]
    # the core's packed arrays hold the addresses in order, per family
    v4 = [a for _, a in ref if a and ":" not in a]
    v6 = [a for _, a in ref if a and ":" in a]
    p4, p6 = ts.packed(socket.AF_INET), ts.packed(socket.AF_INET6)
    assert [socket.inet_ntop(socket.AF_INET, p4[i : i + 4]) for i in range(0, len(p4), 4)] == v4
    assert [socket.inet_ntop(socket.AF_INET6, p6[i : i + 16]) for i in range(0, len(p6), 16)] == v6
    assert ts.names == ["localhost"]
    # labels only where the target is not the address as printed
    assert {ts.address_strings()[i] for i in ts.labels} == {"0:0:0:0:0:0:0:1", "fe80::1%lo"}
    assert ts.n_lines == EVERY_KIND.count("\n") + 1


def test_arguments_parse_like_lines() -> None:
    ts = pl.TargetSet()
    args = ["127.0.0.1", "::1", "127.0.0.2-3", "localhost", "::0:1", "127.1.0.0/30"]
    ts.add_arguments(args)
    assert ts.n_errors == 0
    assert ts.address_strings() == [lab for lab, _ in reference("\n".join(args))]


MISTAKES = [
    ("300.0.0.1", "is not an IPv4/IPv6 address"),
    ("1.2.3.4.5", "is not an IPv4/IPv6 address"),
    ("127.0.0.01", "is not an IPv4/IPv6 address"),
    ("1.2.3.4/33", "bad CIDR block"),
    ("::/64", "too large"),
    ("127.0.0.9-127.0.0.1", "the end is before the start"),
    ("127.0.0.1-::1", "both ends"),
    ("127.0.0.1-300", "bad range"),
    ("a..b", "is not an IPv4/IPv6 address"),
    ("-f", "starts with '-'"),
    ("12345", "is not an IPv4/IPv6 address"),
    (":::1", "is not an IPv4/IPv6 address"),
]


def test_every_mistake_is_reported_with_its_line_number() -> None:
    good = ["127.0.0.1"] * 30
    lines = good[:]
    where = {}
    for i, (bad, _) in enumerate(MISTAKES):
        lines.insert(2 * i + 1, bad)
    lines.append("caf\xe9.example")  # not a host name (non-ASCII): refused too
    for n, line in enumerate(lines, 1):
        where[line] = n
    raw = ("\n".join(lines) + "\n").encode() + b"\xff\xfe\n" + b"127.0.0.1 a\0b\n"
    ts = parse(raw)
    assert ts.fatal is None
    assert ts.n_errors == len(MISTAKES) + 3
    got = {(no, msg) for _, no, msg in ts.errors}
    for bad, message in MISTAKES:
        assert any(no == where[bad] and message in msg for no, msg in got), (bad, got)
    n_lines = len(lines)
    assert any(no == n_lines + 1 and "not UTF-8" in msg for no, msg in got)
    assert any(no == n_lines + 2 and "NUL byte" in msg for no, msg in got)
    assert all(src == "t.txt" for src, _, _ in ts.errors)
    with pytest.raises(Exception, match=r"t\.txt:2: target '300\.0\.0\.1'"):
        api.check_target_set(ts)


def test_many_bad_lines_are_all_counted_and_the_report_is_capped() -> None:
    text = "\n".join(("127.0.0.1" if i % 3 else f"bad!{i}") for i in range(3000)) + "\n"
    ts = parse(text)
    assert ts.fatal is None
    assert ts.n_errors == 1000
    assert len(ts.errors) == pl.MAX_ERRORS_KEPT
    with pytest.raises(Exception) as e:
        api.check_target_set(ts)
    msg = str(e.value)
    assert msg.count("\n") == 20 and msg.endswith("... and 980 more bad targets")


def test_a_mostly_garbage_file_is_refused_early() -> None:
    text = "127.0.0.1\n" + "this is a log line, not a target\n" * 100_000
    ts = parse(text)
    assert ts.fatal and "are not targets: is this the right file?" in ts.fatal
    assert ts.n_lines < 5000 or ts.n_errors < 5000  # stopped early, not read to the end


def test_a_line_over_the_limit_stops_reading(tmp_path: Path) -> None:
    ts = parse(b"127.0.0.1\n" + b"1" * (pl.MAX_LINE + 1) + b"\n127.0.0.2\n")
    assert ts.fatal and "t.txt:2: line longer than" in ts.fatal


def test_dev_zero_is_refused_without_reading_it_all() -> None:
    with open("/dev/zero", "rb", buffering=0) as f:
        ts = pl.TargetSet()
        ts.add_file(f, "/dev/zero")
    assert ts.fatal and ts.fatal.startswith("/dev/zero:1: line longer than")


def test_a_big_file_streams(tmp_path: Path) -> None:
    # 200,000 lines through 1 MiB reads: lines cut at every read boundary join up
    f = tmp_path / "big.txt"
    n = 200_000
    f.write_text("".join(f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}\n" for i in range(n)))
    ts = pl.TargetSet()
    with open(f, "rb", buffering=0) as fh:
        ts.add_file(fh, str(f))
    assert ts.n_errors == 0 and ts.n_hosts == n and ts.runs() == [(pl.RUN_V4, n)]
    p = ts.packed(socket.AF_INET)
    assert p[-4:] == bytes([127, (n - 1) >> 16 & 255, (n - 1) >> 8 & 255, (n - 1) & 255])


# ---------------------------------------------------------------- formatters
def make_row(rng: random.Random, family: int) -> tuple[bytes, SlotStats]:
    """A plausible core row (and the slot_stats() the old path read)."""
    alen = 4 if family == socket.AF_INET else 16
    addr = (
        bytes([127, 0, rng.randrange(256), rng.randrange(256)])
        if alen == 4
        else (b"\0" * 15 + bytes([rng.randrange(1, 256)]))
    )
    kind = rng.randrange(6)
    sent = rng.choice([1, 1, 2, 3, 10, 1000])
    recv = 0 if kind == 0 else rng.randrange(0, sent + 1) if kind < 3 else sent
    rtts = [
        rng.choice(
            [
                rng.randrange(1, 2_000_000),
                rng.randrange(1, 100) * 100 + 50,
                rng.randrange(1, 100) * 1000 + 500,
                10_000_000_000 + rng.randrange(999),
            ]
        )
        for _ in range(recv)
    ]
    mn, mx, sm = (min(rtts), max(rtts), sum(rtts)) if rtts else (0, 0, 0)
    sq = sum(float(r) * float(r) for r in rtts)
    js = sum(abs(a - b) for a, b in zip(rtts[1:], rtts[:-1], strict=True))
    dup = rng.choice([0, 0, 1, 7])
    late = rng.choice([0, 0, 2])
    serr = rng.choice([0, 0, 0, 1]) if kind != 5 else sent
    unr = rng.choice([0, 1]) if kind == 4 else 0
    texc = rng.choice([0, 1]) if kind == 4 and not unr else 0
    et, ec = (3, 1) if unr else (11, 0) if texc else (0, 0)
    has_router = rng.choice([0, 1]) if (unr or texc) else 0
    router = (bytes([127, 0, 0, 254]) if alen == 4 else b"\0" * 15 + b"\x02") if has_router else b""
    ttl = rng.choice([64, 0, 255]) if recv else 0
    tmo = sent - recv
    row = ROW.pack(
        mn,
        mx,
        sm,
        js,
        sq,
        sent,
        recv,
        dup,
        late,
        tmo,
        unr,
        texc,
        serr,
        0,  # closed: ICMP rows have no port
        ttl,
        et,
        ec,
        has_router,
        0,  # port
        addr.ljust(16, b"\0"),
        router.ljust(16, b"\0"),
        0,  # proto: ICMP
    )
    rtr = socket.inet_ntop(family, router) if has_router else None
    st = SlotStats(
        sent=sent,
        received=recv,
        duplicates=dup,
        late=late,
        timeouts=tmo,
        unreachable=unr,
        time_exceeded=texc,
        send_errors=serr,
        min_ns=mn,
        max_ns=mx,
        sum_ns=sm,
        sumsq_ns2=sq,
        jitter_sum_ns=js,
        jitter_n=recv - 1 if recv > 1 else 0,
        last_ttl=ttl,
        last_err_type=et,
        last_err_code=ec,
        last_err_router=rtr,
        user_timed=0,
    )
    return row, st


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("count", [1, 3])
def test_formatters_equal_the_python_formatting_byte_for_byte(family: int, count: int) -> None:
    rng = random.Random(family * 10 + count)
    fmts = {
        pl.FMT_TEXT: lambda h: formats.text_line(h, count),
        pl.FMT_JSON: formats.json_line,
        pl.FMT_CSV: formats.csv_line,
        pl.FMT_TARGET: formats.target_line,
    }
    rows = [make_row(rng, family) for _ in range(3000)]
    labels = [None] * len(rows)
    for i in range(0, len(rows), 97):
        labels[i] = rng.choice(["localhost", 'host,with"comma', "caf\xe9", "::0:1", "a\\b"])
    hosts = []
    for (row, st), lab in zip(rows, labels, strict=True):
        alen = 4 if family == socket.AF_INET else 16
        addr = socket.inet_ntop(family, row[ROW.size - 38 : ROW.size - 38 + alen])
        hosts.append(api._host_from_stats(lab or addr, addr, st))
    for code, ref in fmts.items():
        for sel in (pl.SEL_ALL, pl.SEL_ALIVE, pl.SEL_DOWN):
            f = pl.Formatter(code, sel, count)
            for (row, _), lab in zip(rows, labels, strict=True):
                f.write_rows(row, 1, family, lab)
            want = "".join(
                ref(h) for h in hosts if sel == pl.SEL_ALL or (sel == pl.SEL_ALIVE) == h.alive
            )
            got = f.getvalue().decode("utf-8", "surrogateescape")
            assert got == want, next(
                (g, w) for g, w in zip(got.splitlines(), want.splitlines(), strict=False) if g != w
            )
            assert f.alive == sum(h.alive for h in hosts) and f.rows == len(rows)
    # several rows in one call
    f = pl.Formatter(pl.FMT_JSON, pl.SEL_ALL, count)
    f.write_rows(b"".join(r for r, _ in rows[:50]), 50, family)
    assert f.getvalue().decode() == "".join(
        formats.json_line(api._host_from_stats(h.address or "", h.address, st))
        for h, (_, st) in zip(hosts[:50], rows[:50], strict=True)
    )


def test_formatter_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        pl.Formatter(99, 0, 1)
    f = pl.Formatter(pl.FMT_JSON, 0, 1)
    with pytest.raises(ValueError, match="fewer than n rows"):
        f.write_rows(b"\0" * 10, 1, socket.AF_INET)
    with pytest.raises(ValueError, match="one row"):
        f.write_rows(bytes(pl.ROW_SIZE * 2), 2, socket.AF_INET, "x")


# ---------------------------------------------------------------- real sweeps
@needs_root
def test_a_real_sweep_formats_and_exports_like_its_host_results() -> None:
    res = api.sweep(
        [
            "127.0.0.1",
            "::1",
            "localhost",
            "127.0.3.0/28",
            "no-such-host.invalid",
            "::0:1",
            "127.0.0.5-7",
        ],
        rate_pps=0,
        count=2,
        interval_s=0.01,
        workers=2,
    )
    hosts = list(res)
    for code, ref in (
        (pl.FMT_TEXT, lambda h: formats.text_line(h, 2)),
        (pl.FMT_JSON, formats.json_line),
        (pl.FMT_CSV, formats.csv_line),
    ):
        f = pl.Formatter(code, pl.SEL_ALL, 2)
        res.write_rows(f, 2, ref)
        assert f.getvalue().decode() == "".join(ref(h) for h in hosts)
        assert f.alive == sum(h.alive for h in hosts) == len(hosts) - 1
    cols = res.columns()
    assert list(cols["received"]) == [h.received for h in hosts]
    assert list(cols["sent"]) == [h.sent for h in hosts]
    assert list(cols["family"])[:3] == [4, 6, 4] and cols["family"][3 + 16] == 0
    for k in ("min_ms", "avg_ms", "max_ms", "stddev_ms", "jitter_ms"):
        got = list(cols[k])
        want = [getattr(h, k) for h in hosts]
        assert all((w is None and g != g) or g == w for g, w in zip(got, want, strict=True)), k
    assert len(cols["address"]) == 16 * len(hosts)
    assert cols["address"][:4] == bytes([127, 0, 0, 1])
    assert memoryview(cols["sent"]).format == "I"


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fastping_cmd(*args),
        capture_output=True,
        text=True,
        env=child_env(),
        input=input,
        timeout=120,
    )


@needs_root
def test_alive_and_unreachable_print_bare_targets(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("127.0.0.1\n::1\nlocalhost\n")
    r = run("sweep", "--rate", "0", "-a", "-f", str(f))
    assert r.returncode == 0 and r.stdout == "127.0.0.1\n::1\nlocalhost\n", r
    r = run("sweep", "--rate", "0", "-u", "-f", str(f))
    assert r.returncode == 0 and r.stdout == ""
    r = run("sweep", "--rate", "0", "-u", "127.0.0.1", "no-such-host.invalid")
    assert r.returncode == 2 and r.stdout == "no-such-host.invalid\n"


@needs_root
def test_csv_output_has_a_header_and_a_row_per_target() -> None:
    r = run("sweep", "--rate", "0", "--csv", "127.0.0.1", "::1")
    lines = r.stdout.splitlines()
    assert lines[0] == formats.CSV_HEADER.strip()
    assert [x.split(",")[:4] for x in lines[1:]] == [
        ["127.0.0.1", "127.0.0.1", "1", "1"],
        ["::1", "::1", "1", "1"],
    ]


@needs_root
def test_json_from_a_file_equals_json_from_arguments(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    # loopback only and answering: no link-local scope, no "::" (in ::1/127), no
    # IPv4-mapped address (the parsing tests above have them; nothing is sent there)
    text = EVERY_KIND.replace("fe80::1%lo\n", "").replace("::1/127", "::1/128")
    f.write_text(text.replace("::ffff:127.0.0.1\n", ""))
    r = run("sweep", "--rate", "0", "--json", "-f", str(f))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["target"] for x in rows] == [lab for lab, _ in reference(f.read_text())]


@pytest.mark.parametrize(
    "args, message",
    [
        (("-t", "500"), "-t 500: 500 seconds? the timeout is in seconds here; fping's -t is in ms"),
        (("-c", "2", "-p", "1000"), "-p 1000: 1000 seconds between rounds?"),
        (("-i", "10"), "-i 10: 10 seconds between probes?"),
        (("-r", "3"), "-r 3: 3 probes per second? -r is the rate here"),
        (("-i", "0.01", "--rate", "5"), "-i and --rate say the same thing"),
        (("--json", "--csv"), "choose one output format"),
    ],
)
def test_implausible_values_are_refused_naming_the_mistake(
    args: tuple[str, ...], message: str
) -> None:
    r = run("sweep", *args, "127.0.0.1")
    assert r.returncode == 3, r
    assert message in r.stderr


def test_bad_lines_are_all_reported_by_the_command(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("127.0.0.1\n1.2.3.999\n::1\nbad!name\n")
    r = run("sweep", "-f", str(f))
    assert r.returncode == 3
    assert f"{f}:2: " in r.stderr and f"{f}:4: " in r.stderr
    r = run("sweep", "-f", "/dev/zero")
    assert r.returncode == 3 and "line longer than" in r.stderr


def test_the_system_ping_fallback_goes_through_the_python_twin() -> None:
    # no core arrays behind these results: write_rows and columns() use the HostResults
    res = api.sweep(["127.0.0.1", "::1", "127.0.0.2-3"], mode="subprocess", rate_pps=0)
    hosts = list(res)
    f = pl.Formatter(pl.FMT_JSON, pl.SEL_ALL, 1)
    res.write_rows(f, 1, formats.json_line)
    assert f.getvalue().decode() == "".join(formats.json_line(h) for h in hosts)
    assert f.alive == 4
    cols = res.columns()
    assert list(cols["family"]) == [4, 6, 4, 4] and list(cols["received"]) == [1, 1, 1, 1]
    assert cols["address"][16:32] == socket.inet_pton(socket.AF_INET6, "::1")
