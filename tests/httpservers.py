"""Real HTTP(S) servers for the HTTP check tests and benchmarks, on loopback only.

- ``make_certs(dir)``: a CA made here, and three leaf certificates it signs:
  ``good`` (localhost, 127.0.0.1, ::1), ``expired`` (same names, not after yesterday)
  and ``wrongname`` (only ``wrong.invalid``), with the ``cryptography`` package.
- ``Nginx``: Debian's nginx run with a configuration of its own in a temp directory
  (``nginx -p DIR -c DIR/nginx.conf``, pid and error log there), listening on
  127.0.0.1 and [::1] on free ports: plain HTTP, HTTPS with each certificate.
- ``SpecialServer``: a small asyncio server that answers after a known delay,
  resets every connection, or accepts and never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_tool(name: str) -> str:
    """The tool's path; skip without it, but fail under CI=true (a skip in CI
    would hide a missing apt package)."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if path is None:
        msg = f"needs {name} (apt-get install {name})"
        if IN_CI:
            pytest.fail(msg + " under CI=true")
        pytest.skip(msg)
    return path


def free_port() -> int:
    """A TCP port free on both 127.0.0.1 and ::1 (checked on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s4:
            s4.bind(("127.0.0.1", 0))
            port = s4.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
                    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s6.bind(("::1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


# ---------------------------------------------------------------------------------
# certificates


def make_certs(d: Path) -> tuple[dict[str, Path], dict[str, float]]:
    """CA + leaves in ``d``; returns (paths: ca, good.crt/.key, expired.*, wrongname.*;
    each leaf's notAfter as a Unix time)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fastping test CA"))
        .issuer_name(name("fastping test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out: dict[str, Path] = {"ca": d / "ca.crt"}
    not_after: dict[str, float] = {}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(
        tag: str, sans: list[x509.GeneralName], before: dt.datetime, after: dt.datetime
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(f"fastping test {tag}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(before)
            .not_valid_after(after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        out[f"{tag}.crt"] = d / f"{tag}.crt"
        out[f"{tag}.key"] = d / f"{tag}.key"
        out[f"{tag}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{tag}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        not_after[tag] = after.replace(microsecond=0).timestamp()

    local = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    leaf("good", local, now - dt.timedelta(days=1), now + dt.timedelta(days=45))
    leaf("expired", local, now - dt.timedelta(days=60), now - dt.timedelta(days=1))
    leaf(
        "wrongname",
        [x509.DNSName("wrong.invalid")],
        now - dt.timedelta(days=1),
        now + dt.timedelta(days=45),
    )
    return out, not_after


# ---------------------------------------------------------------------------------
# nginx


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
{user}
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp_body;
    proxy_temp_path {d}/tmp_proxy;
    fastcgi_temp_path {d}/tmp_fcgi;
    uwsgi_temp_path {d}/tmp_uwsgi;
    scgi_temp_path {d}/tmp_scgi;
    keepalive_requests 100000;
    default_type text/plain;
{servers}
}}
"""

LOCATIONS = """\
        root {d}/www;
        location = / {{ return 200 "fastping ok\\n"; }}
        location = /json {{ default_type application/json;
            return 200 '{{"status": "up", "db": {{"ok": true, "lag": 3}}}}'; }}
        location = /redirect {{ return 302 /; }}
        location = /redirect2 {{ return 301 /redirect; }}
        location = /loop {{ return 302 /loop; }}
        location = /down {{ return 503 "maintenance\\n"; }}
        location = /missing {{ return 404; }}
"""


class Nginx:
    """nginx on loopback with ports ``http``, ``https`` (good cert), ``expired``,
    ``wrongname``; each on 127.0.0.1 and [::1]."""

    def __init__(self, d: Path, workers: int = 1, big_kb: int = 64) -> None:
        self.d = d
        self.workers = workers
        self.big_kb = big_kb
        self.certs, self.not_after = make_certs(d)
        self.ports = {k: free_port() for k in ("http", "https", "expired", "wrongname")}
        self.proc: subprocess.Popen[bytes] | None = None

    def _server(self, port: int, tls: str | None) -> str:
        ssl = ""
        if tls:
            ssl = (
                f"        ssl_certificate {self.d}/{tls}.crt;\n"
                f"        ssl_certificate_key {self.d}/{tls}.key;\n"
                "        ssl_protocols TLSv1.2 TLSv1.3;\n"
                "        ssl_session_cache off; ssl_session_tickets off;\n"
            )
        s = " ssl" if tls else ""
        return (
            "    server {\n"
            f"        listen 127.0.0.1:{port}{s};\n"
            f"        listen [::1]:{port}{s} ipv6only=on;\n"
            f"{ssl}" + LOCATIONS.format(d=self.d) + "    }\n"
        )

    def start(self) -> Nginx:
        exe = need_tool("nginx")
        (self.d / "www").mkdir(exist_ok=True)
        (self.d / "www" / "big").write_bytes(b"x" * (self.big_kb * 1024))
        for sub in ("tmp_body", "tmp_proxy", "tmp_fcgi", "tmp_uwsgi", "tmp_scgi"):
            (self.d / sub).mkdir(exist_ok=True)
        servers = "".join(
            [
                self._server(self.ports["http"], None),
                self._server(self.ports["https"], "good"),
                self._server(self.ports["expired"], "expired"),
                self._server(self.ports["wrongname"], "wrongname"),
            ]
        )
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = NGINX_CONF.format(d=self.d, workers=self.workers, servers=servers, user=user)
        (self.d / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(
            [
                exe,
                "-p",
                str(self.d),
                "-c",
                str(self.d / "nginx.conf"),
                "-e",
                str(self.d / "error.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err} {self.error_log()}")
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.ports["wrongname"]), 0.2),
                    socket.create_connection(("::1", self.ports["wrongname"]), 0.2),
                ):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start listening in 10 s: " + self.error_log())

    def error_log(self) -> str:
        p = self.d / "error.log"
        return p.read_text() if p.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, master exits
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def url(self, kind: str = "https", path: str = "/", host: str = "127.0.0.1") -> str:
        scheme = "http" if kind == "http" else "https"
        h = f"[{host}]" if ":" in host else host
        return f"{scheme}://{h}:{self.ports[kind]}{path}"


# ---------------------------------------------------------------------------------
# a server with known misbehaviour, in a thread of its own


class SpecialServer:
    """``mode``: ``slow`` (answers a valid HTTP/1.1 200 after ``delay_s`` from the
    request's end), ``reset`` (RST on every connection: SO_LINGER 0 then close),
    ``silent`` (accepts, reads, never answers), ``http10`` (an HTTP/1.0 answer whose
    body ends at the close), ``cut`` (closes 10 bytes into a 1,000-byte body),
    ``oneshot`` (like slow, but closes after one answer, keep-alive or not). Listens on
    127.0.0.1 and ::1."""

    def __init__(self, mode: str, delay_s: float = 0.0) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self.connections = 0
        self.active = 0
        self.max_active = 0

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.mode == "reset":
                sock = w.get_extra_info("socket")
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                w.transport.abort()
                return
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                if self.mode == "silent":
                    await asyncio.sleep(3600)
                await asyncio.sleep(self.delay_s)
                if self.mode == "http10":  # no Content-Length: the body ends at the close
                    w.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"y" * 5000)
                    await w.drain()
                    break
                if self.mode == "cut":  # promises 1000 bytes, sends 10, closes
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"z" * 10)
                    await w.drain()
                    break
                body = b"slow but fine\n"
                w.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await w.drain()
                if b"connection: close" in head.lower() or self.mode == "oneshot":
                    break  # oneshot: closes after one answer though keep-alive was asked
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.active -= 1
            with contextlib.suppress(Exception):
                w.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def up() -> None:
            for host in ("127.0.0.1", "::1"):
                self._servers.append(await asyncio.start_server(self._handle, host, self.port))
            self.ready.set()

        self.loop.run_until_complete(up())
        self.loop.run_forever()
        for s in self._servers:
            s.close()
        # cancel handlers still sleeping (silent mode) so the loop closes cleanly
        for t in asyncio.all_tasks(self.loop):
            t.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    def start(self) -> SpecialServer:
        self.thread.start()
        if not self.ready.wait(5):
            raise RuntimeError("special server did not start")
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        h = f"[{host}]" if ":" in host else host
        return f"http://{h}:{self.port}{path}"
