"""HTTPS checks at scale: fastping's HttpScheduler against Debian's blackbox_exporter.

Both probe the same N HTTPS URLs of one local nginx (tests/httpservers.py, a CA made
here, 127.0.0.1), each URL every INTERVAL seconds for DURATION seconds, one after
the other (never at once: they would share the two cores):

- fastping: ``HttpScheduler`` + ``HttpRunner`` in this process (a new connection per
  check, as blackbox makes). CPU: this process's getrusage over the run.
- blackbox_exporter 0.23 with a module of our own (http prober, the same CA, ip4),
  driven as Prometheus drives it: one ``GET /probe?module=..&target=URL`` per URL per
  interval, each URL at a fixed offset in the interval (Prometheus spreads targets the
  same way), with ``X-Prometheus-Scrape-Timeout-Seconds``. CPU: the exporter's own
  (``/proc/PID/stat`` utime + stime); the driver's CPU is Prometheus's, reported apart.

Checks/s is checks completed over the run's wall time; CPU per check is the prober's
CPU divided by its checks; nginx's CPU per check is shown too. Phases are medians
(and p90) over successful checks, in blackbox's phases: resolve, connect, tls,
processing (connection ready -> first byte: fastping's send + wait), transfer.

    PYTHONPATH=src python3 benchmarks/bench_http.py                # 1,000 URLs, 10 s, 60 s
    PYTHONPATH=src python3 benchmarks/bench_http.py --urls 200 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from httpservers import Nginx, free_port  # noqa: E402

PHASES = ("resolve", "connect", "tls", "processing", "transfer")
TICK = os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu_s() -> float:
    """Reaped children (fastping's worker processes, once they exited)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process and its reaped children (proc(5): fields 14-17)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    f = text[text.rindex(")") + 2 :].split()
    return sum(int(x) for x in f[11:15]) / TICK


def nginx_cpu_s(master: int) -> float:
    total = proc_cpu_s(master)
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                st = (p / "stat").read_text()
            except OSError:
                continue
            ppid = int(st[st.rindex(")") + 2 :].split()[1])
            if ppid == master:
                total += proc_cpu_s(int(p.name))
    return total


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summarise(name: str, phases: dict[str, list[float]], totals: list[float]) -> list[str]:
    out = []
    for ph in (*PHASES, "total"):
        xs = totals if ph == "total" else phases[ph]
        med, p90 = statistics.median(xs) if xs else None, pct(xs, 0.9)
        out.append(f"  {name:9s} {ph:10s} median {fmt(med)} ms  p90 {fmt(p90)} ms  (n={len(xs)})")
    return out


def fmt(v: float | None) -> str:
    return "   -  " if v is None else f"{v:6.2f}"


async def run_fastping(urls: list[str], ca: str, interval_s: float, duration_s: float,
                       conc: int, resolve_cache_s: float,
                       workers: int = 1) -> dict[str, Any]:  # fmt: skip
    from fastping.http import HttpCheck, HttpRunner, HttpScheduler

    checks = [HttpCheck(u, ca_file=ca, interval_s=interval_s, timeout_s=interval_s,
                        family=socket.AF_INET, all_addresses=False) for u in urls]  # fmt: skip
    results: list[Any] = []
    sched: Any
    if workers > 1:
        from fastping.httpworkers import HttpWorkerPool

        sched = HttpWorkerPool(
            checks,
            workers,
            max_concurrency=conc,
            resolve_cache_s=resolve_cache_s,
            sinks=[results.extend],
        )
    else:
        runner = HttpRunner(max_concurrency=conc, resolve_cache_s=resolve_cache_s)
        sched = HttpScheduler(checks, runner, sinks=[results.extend])
    c0, k0, t0 = self_cpu_s(), children_cpu_s(), time.monotonic()
    await sched.run(duration_s)
    wall = time.monotonic() - t0
    cpu = self_cpu_s() - c0 + children_cpu_s() - k0  # the workers' too
    ok = [r for r in results if r.ok]
    phases = {
        "resolve": [r.dns_ms for r in ok],
        "connect": [r.connect_ms for r in ok],
        "tls": [r.tls_ms for r in ok],
        "processing": [r.send_ms + r.wait_ms for r in ok],
        "transfer": [r.transfer_ms for r in ok],
    }
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r.outcome.value] = outcomes.get(r.outcome.value, 0) + 1
    split = {
        k: statistics.median(xs)
        if (xs := [getattr(r, k) for r in ok if getattr(r, k) is not None])
        else None
        for k in ("tcp_rtt_ms", "wait_ms", "server_ms", "path_ms")
    }
    return {"checks": len(results), "ok": len(ok), "wall": wall, "cpu": cpu, "split": split,
            "phases": phases, "totals": [r.total_ms for r in ok], "outcomes": outcomes,
            "skipped": sched.skipped}  # fmt: skip


_SAMPLE = re.compile(r"^(probe_[a-z_]+)(?:\{([^}]*)\})? (\S+)$", re.M)


async def run_blackbox(urls: list[str], ca: str, interval_s: float, duration_s: float,
                       d: Path) -> dict[str, Any]:  # fmt: skip
    import aiohttp

    exe = shutil.which("prometheus-blackbox-exporter")
    if exe is None:
        raise SystemExit("needs prometheus-blackbox-exporter (apt-get install it)")
    port = free_port()
    cfg = d / "blackbox.yml"
    cfg.write_text(
        "modules:\n"
        "  https_local:\n"
        "    prober: http\n"
        f"    timeout: {interval_s:g}s\n"
        "    http:\n"
        "      preferred_ip_protocol: ip4\n"
        "      ip_protocol_fallback: false\n"
        "      valid_status_codes: [200]\n"
        "      tls_config:\n"
        f"        ca_file: {ca}\n"
    )
    bb = subprocess.Popen(
        [exe, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(d / "blackbox.log", "w"),  # noqa: SIM115
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        base = f"http://127.0.0.1:{port}/probe"
        phases: dict[str, list[float]] = {p: [] for p in PHASES}
        totals: list[float] = []
        done = {"checks": 0, "ok": 0, "errors": 0}
        conn = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=interval_s + 5)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
            head = {"X-Prometheus-Scrape-Timeout-Seconds": f"{interval_s:g}"}

            async def probe(url: str) -> None:
                try:
                    async with s.get(base, params={"module": "https_local", "target": url},
                                     headers=head) as r:  # fmt: skip
                        text = await r.text()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    done["errors"] += 1
                    return
                done["checks"] += 1
                vals: dict[str, float] = {}
                ph: dict[str, float] = {}
                for m in _SAMPLE.finditer(text):
                    name, labels, v = m.group(1), m.group(2) or "", float(m.group(3))
                    if name == "probe_http_duration_seconds":
                        ph[labels.split('"')[1]] = v * 1000
                    else:
                        vals[name] = v
                if vals.get("probe_success") == 1.0:
                    done["ok"] += 1
                    for k in PHASES:
                        phases[k].append(ph.get(k, 0.0))
                    totals.append(vals.get("probe_duration_seconds", 0.0) * 1000)

            tasks: set[asyncio.Task[None]] = set()
            c0, d0, t0 = proc_cpu_s(bb.pid), self_cpu_s(), time.monotonic()
            n = len(urls)
            rounds = max(1, round(duration_s / interval_s))
            # the k-th probe overall: URL k % n at t0 + (k // n) * iv + (k % n) * iv / n
            for k in range(n * rounds):
                due = t0 + (k // n) * interval_s + (k % n) * interval_s / n
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                t = asyncio.create_task(probe(urls[k % n]))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
            wall = time.monotonic() - t0
            cpu, driver = proc_cpu_s(bb.pid) - c0, self_cpu_s() - d0
    finally:
        bb.terminate()
        bb.wait(10)
    return {"checks": done["checks"], "ok": done["ok"], "wall": wall, "cpu": cpu,
            "driver_cpu": driver, "phases": phases, "totals": totals,
            "errors": done["errors"]}  # fmt: skip


async def main(a: argparse.Namespace) -> None:
    d = Path(tempfile.mkdtemp(prefix="fp-http-bench-"))
    ng = Nginx(d, workers=a.nginx_workers).start()
    assert ng.proc is not None
    ca = str(ng.certs["ca"])
    port = ng.ports["https"]
    urls = [f"https://{a.host}:{port}/?u={i}" for i in range(a.urls)]
    # every probe's TLS is verified against this CA: check once that it works
    ssl.create_default_context(cafile=ca)
    lines = [f"{a.urls} HTTPS URLs on nginx (workers {a.nginx_workers}), fastping workers "
             f"{a.workers}, every "
             f"{a.interval:g} s for {a.duration:g} s; {os.cpu_count()} cores, shared"]  # fmt: skip
    res: dict[str, dict[str, Any]] = {}
    try:
        order = ["fastping", "blackbox"] if not a.blackbox_first else ["blackbox", "fastping"]
        if a.only:
            order = [a.only]
        for who in order:
            n0 = nginx_cpu_s(ng.proc.pid)
            if who == "fastping":
                r = await run_fastping(
                    urls, ca, a.interval, a.duration, a.concurrency, a.resolve_cache, a.workers
                )
            else:
                r = await run_blackbox(urls, ca, a.interval, a.duration, d)
            r["nginx_cpu"] = nginx_cpu_s(ng.proc.pid) - n0
            res[who] = r
            extra = (f", skipped {r['skipped']}, outcomes {r['outcomes']}" if who == "fastping"
                     else f", driver CPU {r['driver_cpu']:.1f} s (not counted), "
                          f"failed scrapes {r['errors']}")  # fmt: skip
            lines.append(
                f"{who:9s} checks {r['checks']} (ok {r['ok']}) in {r['wall']:.1f} s = "
                f"{r['checks'] / r['wall']:.1f} checks/s; CPU {r['cpu']:.2f} s = "
                f"{1e6 * r['cpu'] / max(1, r['checks']):.0f} us/check; nginx "
                f"{1e6 * r['nginx_cpu'] / max(1, r['checks']):.0f} us/check{extra}"
            )
            print(lines[-1], flush=True)
    finally:
        ng.stop()
        shutil.rmtree(d, ignore_errors=True)
    lines.append("phases (successful checks):")
    for who, r in res.items():
        lines += summarise(who, r["phases"], r["totals"])
    if "fastping" in res:
        sp = res["fastping"]["split"]
        lines.append(
            "fastping's split (medians; no ICMP here, so the RTT is the kernel's TCP "
            f"handshake RTT): rtt {fmt(sp['tcp_rtt_ms'])} ms, wait {fmt(sp['wait_ms'])} ms, "
            f"server {fmt(sp['server_ms'])} ms, path {fmt(sp['path_ms'])} ms"
        )
    if "fastping" in res and "blackbox" in res:
        f, b = res["fastping"], res["blackbox"]
        cf, cb = f["cpu"] / max(1, f["checks"]), b["cpu"] / max(1, b["checks"])
        lines.append(f"CPU per check: fastping / blackbox = {cf / cb:.2f}")
    print("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--urls", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--blackbox-first", action="store_true")
    ap.add_argument(
        "--host",
        default="localhost",
        help="the URLs' host: localhost (resolved each check) or 127.0.0.1",
    )
    ap.add_argument(
        "--resolve-cache",
        type=float,
        default=5.0,
        help="fastping's http.resolve_cache_s (default 5, as monitor; 0: every check)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="fastping's http.workers: processes running the checks (default 1)",
    )
    ap.add_argument("--only", choices=["fastping", "blackbox"], help="run one side only")
    asyncio.run(main(ap.parse_args()))
