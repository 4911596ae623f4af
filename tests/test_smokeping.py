"""SmokePing itself (Debian's package) with its FPing probe's ``binary`` pointing at
fastping-fping: it runs ``-C N -q -B1 -r1 -4 -t.. -i..`` on loopback targets, parses
our stderr and writes RTTs into its RRD files, which ``rrdtool fetch`` reads back."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SRC

pytestmark = [pytest.mark.privileged]

CONFIG = """\
*** General ***
owner    = fastping test
contact  = nobody@localhost
mailhost = localhost
sendmail = /bin/true
imgcache = {d}/cache
imgurl   = cache
datadir  = {d}/data
piddir   = {d}
cgiurl   = http://localhost/smokeping.cgi
smokemail = /etc/smokeping/smokemail
tmail = /etc/smokeping/tmail

*** Database ***
step     = 5
pings    = 3
AVERAGE  0.5   1  100

*** Presentation ***
template = /etc/smokeping/basepage.html
+ charts
menu = Charts
title = Charts
+ overview
width = 600
height = 50
range = 10h
+ detail
width = 600
height = 200
unison_tolerance = 2
"Last 3 Hours"    3h

*** Probes ***
+ FPing
binary = {d}/fastping-fping
mininterval = 0.01
timeout = 1

*** Targets ***
probe = FPing
menu = Top
title = Top
+ Local
menu = Local
title = Local
++ lo1
menu = lo1
title = lo1
host = 127.0.0.1
++ lo2
menu = lo2
title = lo2
host = 127.0.0.2
"""


def test_smokeping_fping_probe_writes_rrd(tmp_path: Path) -> None:
    if not ROOT:
        pytest.fail("needs root for raw ICMP sockets (CI runs as root)")
    for tool in ("smokeping", "rrdtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"needs {tool}: apt-get install smokeping rrdtool")
    (tmp_path / "data").mkdir()
    (tmp_path / "cache").mkdir()
    wrapper = tmp_path / "fastping-fping"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH={SRC} exec {sys.executable} -m fastping.commands.fping "$@"\n'
    )
    wrapper.chmod(0o755)
    config = tmp_path / "config"
    config.write_text(CONFIG.format(d=tmp_path))
    # --debug: one round of every probe, no fork. An RRD row (step 5 s) is complete
    # once a later update crosses into the next step: three rounds, each waiting for
    # its offset within the step, always cross at least one boundary.
    logs = []
    for _ in range(3):
        r = subprocess.run(
            ["smokeping", f"--config={config}", "--debug"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        logs.append(r.stdout + r.stderr)
        assert r.returncode == 0, logs[-1]
    log = "\n".join(logs)
    assert "Executing " + str(wrapper) + " -C 3 -q -B1 -r1" in log, log
    assert "Got fping output: '127.0.0.1 : 0." in log, log
    for name in ("lo1", "lo2"):
        rrd = tmp_path / "data" / "Local" / f"{name}.rrd"
        fetch = subprocess.run(
            ["rrdtool", "fetch", str(rrd), "AVERAGE", "-s", "-120"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        header, *rows = [x for x in fetch.splitlines() if x.strip()]
        cols = header.split()
        assert cols == ["uptime", "loss", "median", "ping1", "ping2", "ping3"], fetch
        full = []
        for row in rows:
            vals = [float(v) for v in row.split(":", 1)[1].split()]
            if not math.isnan(vals[2]):
                full.append(dict(zip(cols, vals, strict=True)))
        assert full, f"no RTT row in {rrd}:\n{fetch}\n{log}"
        for v in full:
            # loopback: no loss, RTTs (seconds) above zero and far below a millisecond*10
            assert v["loss"] == 0.0, fetch
            for k in ("median", "ping1", "ping2", "ping3"):
                assert 0 < v[k] < 0.01, fetch
