"""Write a .pyx with its ``include "..."`` units pasted in, for cython-lint: the
linter reads one file at a time, so without this every cimport of _icmp.pyx looks
unused (its users are in the units) and the units go unchecked.

    python .ci/expand_pyx.py src/fastping/_icmp.pyx OUT_DIR
Each unit starts with a ``# ---- unit: PATH`` line, so a finding's line is found."""

from __future__ import annotations

import re
import sys
from pathlib import Path

INCLUDE = re.compile(r'^include "([^"]+)"')


def expand(path: Path) -> str:
    out = []
    for line in path.read_text().splitlines():
        m = INCLUDE.match(line)
        if m:
            unit = path.parent / m.group(1)
            out.append(f"# ---- unit: {unit}")
            out.append(expand(unit))
        else:
            out.append(line)
    return "\n".join(out)


if __name__ == "__main__":
    src, dest = Path(sys.argv[1]), Path(sys.argv[2])
    (dest / src.name).write_text(expand(src) + "\n")
