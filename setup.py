"""Build the fastping._icmp extension.

FASTPING_DEBUG=1     -O0 -g, Cython line tracing and bounds checks.
FASTPING_SANITIZE=1  ASan + UBSan; run the tests with
                     LD_PRELOAD=$(gcc -print-file-name=libasan.so) (see .ci/sanitize).
"""

import os

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

ext = Extension(
    "fastping._icmp",
    ["src/fastping/_icmp.pyx"],
    include_dirs=["src/fastping/includes"],
    define_macros=macros,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(
    ext_modules=cythonize(
        [ext],
        compiler_directives=directives,
        include_path=["src/fastping"],
        force=DEBUG or SANITIZE,
    )
)
