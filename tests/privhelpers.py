"""Helpers for the privilege-mode tests: throwaway network namespaces, a
throwaway non-root user, and a child Python process run as that user.

Everything here changes only what it created: the namespace's own
``net.ipv4.ping_group_range`` (a per-namespace sysctl, so other tests and
sessions on this host never see it), a user with a random name, a temp copy of
the package. All are removed afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000  # <sched.h>
RANGE_PATH = "net.ipv4.ping_group_range"

# The child: reads one JSON job from stdin, prints one JSON answer. Runs with -I
# (no env vars, no user site) so only the copied package is importable.
CHILD = r"""
import json, os, socket, sys
job = json.load(sys.stdin)
sys.path.insert(0, job["src"])
out = {"uid": os.getuid(), "euid": os.geteuid(), "egid": os.getegid(), "groups": os.getgroups()}
with open("/proc/self/status") as f:
    out["cap_eff"] = [l.split()[1] for l in f if l.startswith("CapEff")][0]
try:
    import fastping
    out["has_extension"] = fastping.HAS_EXTENSION
    fam = socket.AF_INET6 if job.get("family") == 6 else socket.AF_INET
    act = job["action"]
    if act == "diagnose":
        from fastping.privilege import diagnose
        out["result"] = diagnose(verify=True, family=fam).to_dict()
    elif act == "open":
        from fastping.probe import open_icmp_socket
        s = open_icmp_socket(fam, mode=job["mode"])
        out["result"] = s.kind
        s.close()
    elif act == "sweep":
        if job["mode"] == "subprocess":
            from fastping.probe import subprocess_sweep
            hosts = subprocess_sweep(job["targets"], **job["kwargs"])
        else:
            hosts = list(fastping.sweep(job["targets"], mode=job["mode"], **job["kwargs"]))
        out["result"] = [h.to_dict() for h in hosts]
    elif act == "cli":
        from fastping.cli import main
        import contextlib, io
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(job["argv"])
        out["result"] = {"rc": rc, "stdout": buf.getvalue()}
    else:
        raise ValueError(act)
except Exception as e:
    out["error"] = type(e).__name__
    out["error_mro"] = [c.__name__ for c in type(e).__mro__]
    out["message"] = str(e)
print(json.dumps(out))
"""


def have_tools(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


def unique(prefix: str = "fp3") -> str:
    return f"{prefix}{secrets.token_hex(3)}"


@contextlib.contextmanager
def netns() -> Iterator[str]:
    """A fresh network namespace with ``lo`` up; deleted afterwards."""
    name = unique("fp3-")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def veth_namespaces() -> Iterator[tuple[str, str]]:
    """``prober`` and ``target`` namespaces joined by a veth pair (10.78.0.1/30 and
    .2); the target answers for all of 10.77.0.0/16 (a local route: any address in
    it is its own), the prober routes it there. Deleted afterwards."""
    with netns() as prober, netns() as target:
        tag = prober[-6:]
        a, b = f"fpta{tag}", f"fptb{tag}"
        for cmd in (
            ("ip", "link", "add", a, "type", "veth", "peer", "name", b),
            ("ip", "link", "set", a, "netns", prober),
            ("ip", "link", "set", b, "netns", target),
            ("ip", "-n", prober, "addr", "add", "10.78.0.1/30", "dev", a),
            ("ip", "-n", target, "addr", "add", "10.78.0.2/30", "dev", b),
            ("ip", "-n", prober, "link", "set", a, "up"),
            ("ip", "-n", target, "link", "set", b, "up"),
            ("ip", "-n", prober, "route", "add", "10.77.0.0/16", "via", "10.78.0.2"),
            ("ip", "-n", target, "route", "add", "local", "10.77.0.0/16", "dev", "lo"),
        ):
            subprocess.run(list(cmd), check=True)
        yield prober, target


def get_range(ns: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-n", RANGE_PATH],
        check=True,
        capture_output=True,
        text=True,
    )
    return " ".join(out.stdout.split())


def set_range(ns: str, value: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-qw", f"{RANGE_PATH}={value}"], check=True
    )


@contextlib.contextmanager
def ping_range(ns: str, value: str) -> Iterator[str]:
    """Set the namespace's ping_group_range; restore the previous value afterwards."""
    before = get_range(ns)
    set_range(ns, value)
    try:
        yield before
    finally:
        set_range(ns, before)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread that has joined network namespace ``ns`` (setns(2)
    acts on the calling thread only, so the test process itself stays put;
    sockets and child processes made by ``fn`` live in ``ns``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: dict[str, Any] = {}

    def run() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({ns}): {os.strerror(err)}")
        finally:
            os.close(fd)
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    try:
        t = threading.Thread(target=run, name=f"netns-{ns}")
        t.start()
        t.join()
    except BaseException:
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@dataclass
class User:
    name: str
    uid: int
    gid: int
    src: str  # copy of the package readable by the user
    python: str


def _copy_package(dest: Path) -> None:
    """Copy the package the tests import (an in-place build or an editable
    install), making sure the compiled core comes along."""
    import fastping
    import fastping._icmp as core

    pkg = Path(fastping.__file__).resolve().parent
    shutil.copytree(pkg, dest / "fastping", ignore=shutil.ignore_patterns("*.c", "__pycache__"))
    so = Path(core.__file__ or "")
    if not (dest / "fastping" / so.name).exists():
        shutil.copy(so, dest / "fastping" / so.name)
    (dest / "child.py").write_text(CHILD)
    for root, _dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def _pick_python(uid: int, gid: int) -> str:
    """An interpreter the user can run with the same major.minor as ours (the
    extension is built for it). Ours may live under /root (mode 700)."""
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [sys.executable, f"/usr/bin/python{want}", shutil.which(f"python{want}") or ""]
    for c in candidates:
        if not c or not os.path.exists(c):
            continue
        out = subprocess.run(
            [
                *_setpriv(uid, gid),
                "env",
                "-i",
                "PATH=/usr/bin:/bin",
                c,
                "-I",
                "-c",
                "import sys, json; print(sys.version_info[0], sys.version_info[1])",
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode == 0 and out.stdout.split() == want.split("."):
            return c
    raise RuntimeError(f"no Python {want} runnable by uid {uid} among {candidates}")


def _setpriv(uid: int, gid: int) -> list[str]:
    # setuid away from 0 clears the permitted/effective capability sets
    # (capabilities(7), "Effect of user ID changes"); --clear-groups drops root's groups.
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


@contextlib.contextmanager
def throwaway_user() -> Iterator[User]:
    """A unique system user with its own group and a readable copy of the package."""
    name = unique("fp3u")
    argv = ["useradd", "--system", "--no-create-home", "--user-group",
            "--shell", "/usr/sbin/nologin", name]  # fmt: skip
    for attempt in range(10):
        # another test run on this host may hold /etc/passwd's lock for a moment
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode == 0:
            break
        if attempt == 9 or "lock" not in out.stderr.lower():
            raise RuntimeError(f"useradd {name} failed: {out.stderr.strip()}")
        time.sleep(0.3)
    tmp = Path(tempfile.mkdtemp(prefix="fp3-src-"))
    try:
        pw = pwd.getpwnam(name)
        os.chmod(tmp, 0o755)
        _copy_package(tmp)
        python = _pick_python(pw.pw_uid, pw.pw_gid)
        yield User(name, pw.pw_uid, pw.pw_gid, str(tmp), python)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["userdel", name], check=False, capture_output=True)
        # --user-group made a group of the same name; userdel removes it when empty.
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def run_child(
    user: User, ns: str, job: dict[str, Any], *, path: str = "/usr/bin:/bin", timeout_s: float = 60
) -> dict[str, Any]:
    """Run one job in a child Python as ``user`` inside namespace ``ns``."""
    job = {**job, "src": user.src}
    argv = [
        "ip", "netns", "exec", ns,
        *_setpriv(user.uid, user.gid),
        "env", "-i", f"PATH={path}", "LC_ALL=C", "HOME=/",
        user.python, "-I", os.path.join(user.src, "child.py"),
    ]  # fmt: skip
    out = subprocess.run(
        argv, input=json.dumps(job), capture_output=True, text=True, timeout=timeout_s
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise AssertionError(f"child failed (rc {out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
