"""Build every cext/*.pyx as the extension module cext.<stem>.

Project metadata lives in pyproject.toml. This file exists only because setuptools cannot say
"cythonize whatever kernels are in cext/" declaratively; a new .pyx needs no edit here.
"""

import platform
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

# Relative paths: setuptools runs this from the project root and rejects absolute sources.
KERNEL_SOURCES = sorted(Path("cext").glob("*.pyx"))

# x86-64-v2 (SSE4.2, POPCNT) is on every x86 server still in service; elsewhere plain -O3.
if platform.machine().lower() in ("x86_64", "amd64"):
    COMPILE_ARGS = ["-O3", "-march=x86-64-v2"]
else:
    COMPILE_ARGS = ["-O3"]

# Kernels check their arguments once per batch before entering `with nogil:`,
# so per-item bounds and wraparound checks are off.
COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
}

# Modules that call a system library: libcrypto by its soname (the one hashlib loads; its
# prototypes are declared in the .pyx, so OpenSSL's development headers are not needed).
LINK_ARGS = {"http_auth": ["-l:libcrypto.so.3"]}

extensions = [
    Extension(
        f"cext.{path.stem}",
        [str(path)],
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=LINK_ARGS.get(path.stem, []),
    )
    for path in KERNEL_SOURCES
]

setup(
    ext_modules=(
        cythonize(extensions, compiler_directives=COMPILER_DIRECTIVES, annotate=False)
        if extensions
        else []
    ),
)
