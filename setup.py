"""Build the fastping._icmp and fastping._pipeline extensions.

FASTPING_DEBUG=1     -O0 -g, Cython line tracing and bounds checks.
FASTPING_SANITIZE=1  ASan + UBSan; run the tests with
                     LD_PRELOAD=$(gcc -print-file-name=libasan.so) (see .ci/sanitize).
"""

import importlib.util
import os
import pathlib
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTPING_DEBUG") == "1"
SANITIZE = os.environ.get("FASTPING_SANITIZE") == "1"

compile_args = ["-O0", "-g3"] if DEBUG or SANITIZE else ["-O2"]
link_args: list[str] = []
macros = [("_GNU_SOURCE", "1")]
directives = {"language_level": "3", "embedsignature": True}
if DEBUG:
    macros.append(("CYTHON_TRACE_NOGIL", "1"))
    macros.append(("FASTPING_DEBUG", "1"))
    directives.update(linetrace=True, boundscheck=True, wraparound=True)
if SANITIZE:
    san = [
        "-fsanitize=address,undefined",
        "-fno-omit-frame-pointer",
        "-fno-sanitize-recover=undefined",
    ]
    compile_args += san
    link_args += san



def write_kinds_pxi() -> None:
    """units/kinds.pxi from the one outcome numbering (fastping.results.EventKind),
    rewritten only when it differs, so an unchanged table recompiles nothing. results.py
    is loaded by its path: it imports only the standard library, and the package (its
    __init__ imports the extension being built) is not imported."""
    spec = importlib.util.spec_from_file_location(
        "_fastping_results_for_build", "src/fastping/results.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    del sys.modules[spec.name]
    text = mod.kinds_pxi()
    path = pathlib.Path("src/fastping/units/kinds.pxi")
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


write_kinds_pxi()

exts = [
    Extension(
        name,
        [f"src/{name.replace('.', '/')}.pyx"],
        include_dirs=["src/fastping/includes"],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    # _icmp: codec and IcmpSocket; _pipeline: targets in, result lines out
    for name in ("fastping._icmp", "fastping._pipeline")
]

setup(
    ext_modules=cythonize(
        exts,
        compiler_directives=directives,
        include_path=["src/fastping"],
        force=DEBUG or SANITIZE,
    )
)
