"""Diagnosis of privilege modes: facts, verdicts, messages, `fastping doctor`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fastping.errors import ConfigError, PermissionDenied
from fastping.privilege import (
    Diagnosis,
    PingBinary,
    diagnose,
    file_has_cap_net_raw,
    find_ping,
    parse_ping_group_range,
    ping_flavor_from_version,
    read_cap_eff,
    read_ping_group_range,
)

SRC = Path(__file__).resolve().parent.parent / "src"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (raw sockets, setcap)")

IPUTILS = PingBinary("/usr/bin/ping", "/usr/bin/ping", "iputils", "ping from iputils 20221126",
                     False, True)  # fmt: skip


def make_diag(**kw: object) -> Diagnosis:
    base: dict[str, object] = dict(
        uid=1000, euid=1000, egid=1000, groups=(1000, 27), cap_eff=0,
        ping_group_range=(1, 0), ping=None, python="/usr/bin/python3.11", user="alice",
    )  # fmt: skip
    base.update(kw)
    return Diagnosis(**base)  # type: ignore[arg-type]


# -- fact readers ---------------------------------------------------------------


def test_read_cap_eff_parses_status(tmp_path: Path) -> None:
    p = tmp_path / "status"
    p.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000002000\n")
    assert read_cap_eff(str(p)) == 1 << 13
    assert make_diag(cap_eff=read_cap_eff(str(p))).cap_net_raw
    p.write_text("CapEff:\t000001fffeffdfff\n")  # everything but bit 13
    assert not make_diag(cap_eff=read_cap_eff(str(p))).cap_net_raw
    assert read_cap_eff(str(tmp_path / "missing")) is None


def test_read_cap_eff_of_this_process_matches_proc() -> None:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("CapEff:"))
    assert read_cap_eff() == int(line.split()[1], 16)


def test_ping_group_range_parse_and_read(tmp_path: Path) -> None:
    assert parse_ping_group_range("1\t0\n") == (1, 0)
    assert parse_ping_group_range("0 2147483647") == (0, 2147483647)
    with pytest.raises(ValueError):
        parse_ping_group_range("1")
    p = tmp_path / "r"
    p.write_text("100\t200\n")
    assert read_ping_group_range(str(p)) == (100, 200)
    p.write_text("garbage")
    assert read_ping_group_range(str(p)) is None
    # this host's real value parses
    with open("/proc/sys/net/ipv4/ping_group_range") as f:
        assert read_ping_group_range() == parse_ping_group_range(f.read())


def test_ping_flavor_from_version() -> None:
    assert ping_flavor_from_version("ping from iputils 20221126") == "iputils"
    assert ping_flavor_from_version("ping utility, iputils-s20180629") == "iputils"
    assert ping_flavor_from_version("BusyBox v1.35.0 (Debian) multi-call binary.") == "busybox"
    assert ping_flavor_from_version("", "/usr/bin/busybox") == "busybox"
    assert ping_flavor_from_version("ping (GNU inetutils) 2.4") == "inetutils"
    assert ping_flavor_from_version("something else") == "unknown"


def test_find_ping_none_on_empty_path(tmp_path: Path) -> None:
    assert find_ping(str(tmp_path)) is None


@pytest.mark.skipif(shutil.which("ping") is None, reason="no ping binary installed")
def test_find_ping_iputils() -> None:
    p = find_ping()
    assert p is not None
    assert os.path.isabs(p.realpath)
    out = subprocess.run([p.path, "-V"], capture_output=True, text=True)
    if "iputils" in out.stdout + out.stderr:
        assert p.flavor == "iputils" and "iputils" in p.version


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
def test_find_ping_busybox_applet_symlink(tmp_path: Path) -> None:
    (tmp_path / "ping").symlink_to(shutil.which("busybox") or "")
    p = find_ping(str(tmp_path))
    assert p is not None and p.flavor == "busybox"
    assert p.realpath.endswith("busybox")


@needs_root
@pytest.mark.skipif(shutil.which("setcap") is None, reason="setcap (libcap2-bin) not installed")
def test_file_capability_detection(tmp_path: Path) -> None:
    exe = tmp_path / "tool"
    shutil.copy("/bin/true", exe)
    assert not file_has_cap_net_raw(str(exe))
    subprocess.run(["setcap", "cap_net_raw+ep", str(exe)], check=True)
    assert file_has_cap_net_raw(str(exe))
    subprocess.run(["setcap", "cap_net_admin+ep", str(exe)], check=True)
    assert not file_has_cap_net_raw(str(exe))


def test_setuid_detected(tmp_path: Path) -> None:
    d = tmp_path / "bin"
    d.mkdir()
    exe = d / "ping"
    shutil.copy("/bin/true", exe)
    os.chmod(exe, 0o755)
    p = find_ping(str(d))
    assert p is not None and not p.setuid_root
    if os.geteuid() == 0:
        os.chmod(exe, 0o755 | stat.S_ISUID)
        p = find_ping(str(d))
        assert p is not None and p.setuid_root and p.privileged


# -- verdicts and messages ------------------------------------------------------


def test_closed_range_no_cap_no_ping_names_everything() -> None:
    d = make_diag()
    assert d.working_modes() == [] and d.best_mode() is None
    msg = d.explain_none()
    assert "CAP_NET_RAW" in msg
    assert "net.ipv4.ping_group_range" in msg
    assert 'sysctl -w net.ipv4.ping_group_range="1000 1000"' in msg
    assert "setcap cap_net_raw+ep /usr/bin/python3.11" in msg
    assert '"1 0" (closed' in msg
    assert "no ping binary on PATH" in msg
    assert "apt-get install iputils-ping" in msg


def test_dgram_allowed_by_supplementary_group() -> None:
    d = make_diag(ping_group_range=(27, 27))
    assert d.dgram_gids == (27,)
    assert d.status("dgram").ok
    assert d.best_mode() == "dgram"
    assert "27 inside it" in d.status("dgram").reason


def test_raw_from_capability_not_uid() -> None:
    # a non-root process with CAP_NET_RAW (setcap on python) gets raw
    assert make_diag(cap_eff=1 << 13).best_mode() == "raw"
    # root in a container without CAP_NET_RAW does not
    root_no_cap = make_diag(uid=0, euid=0, egid=0, groups=(0,), cap_eff=0x1FFFEFFDFFF)
    assert not root_no_cap.status("raw").ok
    assert "setcap" in root_no_cap.explain("raw")


def test_subprocess_verdict_follows_ping_privilege() -> None:
    d = make_diag(ping=IPUTILS)
    assert d.status("subprocess").ok and d.best_mode() == "subprocess"
    plain = PingBinary("/bin/ping", "/bin/ping", "iputils", "", False, False)
    d2 = make_diag(ping=plain)
    st = d2.status("subprocess")
    assert not st.ok
    assert any("setcap cap_net_raw+ep /bin/ping" in f for f in st.fixes)
    # the same unprivileged ping works once ping sockets are open to us
    assert make_diag(ping=plain, ping_group_range=(0, 2147483647)).status("subprocess").ok


def test_verified_results_override_inference() -> None:
    d = make_diag(cap_eff=1 << 13, raw_open_errno=1)  # capability, but the open failed (LSM?)
    st = d.status("raw")
    assert not st.ok and st.verified and "Operation not permitted" in st.reason
    d = make_diag(dgram_open_errno=0)
    assert d.status("dgram").ok and d.status("dgram").verified


def test_to_dict_is_json() -> None:
    d = make_diag(ping=IPUTILS)
    out = json.loads(json.dumps(d.to_dict()))
    assert out["auto_mode"] == "subprocess"
    assert set(out["modes"]) == {"raw", "dgram", "subprocess"}
    assert out["ping_group_range"] == [1, 0]


def test_unknown_mode() -> None:
    with pytest.raises(ValueError):
        make_diag().status("bogus")  # type: ignore[arg-type]


# -- this host, as root -----------------------------------------------------------


@needs_root
def test_diagnose_verified_as_root() -> None:
    d = diagnose(verify=True)
    assert d.is_root and d.cap_net_raw
    raw = d.status("raw")
    assert raw.ok and raw.verified
    assert d.best_mode() == "raw"
    assert d.python == os.path.realpath(sys.executable)


@needs_root
def test_open_icmp_socket_forced_modes_as_root() -> None:
    from fastping.probe import UseSubprocess, open_icmp_socket, resolve_mode

    with open_icmp_socket(socket.AF_INET, mode="raw") as s:
        assert s.kind == "raw"
    with open_icmp_socket(socket.AF_INET6, mode="auto") as s:
        assert s.kind == "raw"
    assert resolve_mode(socket.AF_INET, "auto") == "raw"
    with pytest.raises(ConfigError, match="unknown mode 'fast'"):
        open_icmp_socket(socket.AF_INET, mode="fast")
    if shutil.which("ping"):
        with pytest.raises(UseSubprocess) as ei:
            open_icmp_socket(socket.AF_INET, mode="subprocess")
        assert isinstance(ei.value, PermissionDenied)  # callers unaware of it still fail clearly
        assert resolve_mode(socket.AF_INET, "subprocess") == "subprocess"


# -- fastping doctor ------------------------------------------------------------


def run_cli(*argv: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "fastping.cli", *argv], capture_output=True, text=True, env=env
    )


@needs_root
def test_doctor_text_as_root() -> None:
    out = run_cli("doctor")
    assert out.returncode == 0, out.stderr
    assert "CAP_NET_RAW:        present" in out.stdout
    assert "ping_group_range:" in out.stdout
    assert "mode=auto will use: raw" in out.stdout
    for mode in ("raw", "dgram", "subprocess"):
        assert f"\n  {mode} " in out.stdout


@needs_root
def test_doctor_json_as_root() -> None:
    out = run_cli("doctor", "--json", "-6")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["family"] == "IPv6" and d["verified"] is True
    assert d["modes"]["raw"]["ok"] and d["modes"]["raw"]["verified"]
    assert d["auto_mode"] == "raw"
    # with no ping on PATH the subprocess verdict says so, and raw still works
    out = run_cli("doctor", "--json", "--no-verify", path="/nonexistent")
    d = json.loads(out.stdout)
    assert out.returncode == 0
    assert not d["modes"]["subprocess"]["ok"]
    assert "no ping binary on PATH" in d["modes"]["subprocess"]["reason"]
