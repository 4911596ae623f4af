"""Which async HTTP client for the HTTP checks: checks/s and CPU per check.

Every client fetches the same HTTPS URL of a local nginx (tests/httpservers.py:
127.0.0.1, a certificate of a CA made here), N times, CONC at once, each check on
a new connection (a probe measures connect and TLS every time), and once more with
connections kept alive where the client can. CPU is this process's (user + system,
getrusage) over the run, divided by the checks; nginx runs apart. The machine is
shared and noisy: only same-run ratios mean anything.

    PYTHONPATH=src python3 benchmarks/bench_http_clients.py --n 2000 --conc 50
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from httpservers import Nginx  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(name: str, one: Callable[[int], Awaitable[int]], n: int, conc: int) -> None:
    sem = asyncio.Semaphore(conc)

    async def w(i: int) -> int:
        async with sem:
            return await one(i)

    c0, t0 = cpu_s(), time.perf_counter()
    res = await asyncio.gather(*(w(i) for i in range(n)))
    c1, t1 = cpu_s(), time.perf_counter()
    ok = sum(1 for r in res if r == 200)
    print(
        f"{name:34s} ok {ok}/{n}  checks/s {n / (t1 - t0):7.0f}  "
        f"CPU/check {1e6 * (c1 - c0) / n:6.0f} us",
        flush=True,
    )


async def main(n: int, conc: int) -> None:
    d = Path(tempfile.mkdtemp(prefix="fp-http-clients-"))
    ng = Nginx(d, workers=1).start()
    url = ng.url("https", "/")
    ca = str(ng.certs["ca"])
    ctx = ssl.create_default_context(cafile=ca)
    print(f"nginx {url}, {n} checks, {conc} at once")
    try:
        from fastping.http import HttpCheck, HttpRunner

        runner = HttpRunner(max_concurrency=conc)
        check = HttpCheck(url, ca_file=ca)

        async def fp(i: int) -> int:
            return (await runner.run(check))[0].status or 0

        await measure("fastping (asyncio + h11), phases", fp, n, conc)
        # connection reuse is per check: CONC checks, each run in turn on its own connection
        checks_ka = [
            HttpCheck(f"{url}?c={i}", ca_file=ca, reuse_connection=True) for i in range(conc)
        ]
        runner_ka = HttpRunner(max_concurrency=conc)
        locks = [asyncio.Lock() for _ in range(conc)]

        async def fp_ka(i: int) -> int:
            async with locks[i % conc]:
                return (await runner_ka.run(checks_ka[i % conc]))[0].status or 0

        await measure("fastping keep-alive", fp_ka, n, conc)
        await runner_ka.close()

        import aiohttp

        tc = aiohttp.TraceConfig()
        marks: list[int] = []

        async def mark(*_: object) -> None:
            marks.append(time.perf_counter_ns())

        for sig in (
            "on_request_start",
            "on_dns_resolvehost_start",
            "on_connection_create_start",
            "on_connection_create_end",
            "on_request_headers_sent",
            "on_request_end",
        ):
            getattr(tc, sig).append(mark)
        conn = aiohttp.TCPConnector(ssl=ctx, force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=conn, trace_configs=[tc]) as s:

            async def ah(i: int) -> int:
                async with s.get(url) as r:
                    await r.read()
                    return r.status

            await measure(f"aiohttp {aiohttp.__version__} new conn + trace", ah, n, conc)
        conn = aiohttp.TCPConnector(ssl=ctx, limit=0)
        async with aiohttp.ClientSession(connector=conn) as s:

            async def ah_ka(i: int) -> int:
                async with s.get(url) as r:
                    await r.read()
                    return r.status

            await measure("aiohttp keep-alive", ah_ka, n, conc)

        import httpcore
        import httpx

        async def trace(ev: str, info: object) -> None:
            marks.append(time.perf_counter_ns())

        async with httpcore.AsyncConnectionPool(
            ssl_context=ctx, max_keepalive_connections=0, max_connections=conc
        ) as pool:

            async def hc(i: int) -> int:
                return (await pool.request("GET", url, extensions={"trace": trace})).status

            await measure(f"httpcore {httpcore.__version__} new conn + trace", hc, n, conc)
        async with httpcore.AsyncConnectionPool(ssl_context=ctx, max_connections=conc) as pool:

            async def hc_ka(i: int) -> int:
                return (await pool.request("GET", url)).status

            await measure("httpcore keep-alive", hc_ka, n, conc)
        async with httpx.AsyncClient(
            verify=ctx, limits=httpx.Limits(max_keepalive_connections=0, max_connections=conc)
        ) as c:

            async def hx(i: int) -> int:
                return (await c.get(url)).status_code

            await measure(f"httpx {httpx.__version__} new conn", hx, n, conc)
    finally:
        ng.stop()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--conc", type=int, default=50)
    a = ap.parse_args()
    asyncio.run(main(a.n, a.conc))
