"""The optional compiled page paths (harness/native.py loads them).

Each extension is `optional`: when gcc or the Python headers are missing the build of
that module is skipped with a warning and the pure-Python twin runs.  Every module is
built with the SHA-256 of its C source, so a build older than its source is recognised
and not used (an editable install keeps the .so next to a .c that may have moved on).
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
#: extension name -> its C source (one file each: each has one Python twin to match)
MODULES = {"harness._recv": "harness/csrc/recv.c", "harness._send": "harness/csrc/send.c"}


def _extension(name: str, source: str) -> Extension:
    digest = hashlib.sha256((HERE / source).read_bytes()).hexdigest()
    return Extension(name, [source], optional=True,
                     define_macros=[("HARNESS_SOURCE_HASH", f'"{digest}"')],
                     extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"])


setup(ext_modules=[_extension(n, s) for n, s in MODULES.items() if (HERE / s).exists()])
