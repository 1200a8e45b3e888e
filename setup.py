"""Build script: compiles the C data plane (src_ext/) into the extension l4lb._dataplane.

Set L4LB_NO_EXTENSIONS=1 to install without compiling; l4lb then runs only with the
pure-Python reference data plane (and `l4lb run` says so instead of starting).
"""

import glob
import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("L4LB_NO_EXTENSIONS", "") in ("", "0"):
    from Cython.Build import cythonize

    sources = ["src_ext/_dataplane.pyx", *sorted(glob.glob("src_ext/core/*.c"))]
    ext_modules = cythonize(
        [
            Extension(
                "l4lb._dataplane",
                sources=sources,
                include_dirs=["src_ext/core", "src_ext/includes"],
                extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra",
                                    "-Wno-unused-parameter", "-fno-strict-aliasing"],
                libraries=["pthread"],
                depends=[*sorted(glob.glob("src_ext/core/*.h")), "src_ext/includes/core.pxd"],
            )
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        include_path=["src_ext/includes"],
    )

setup(ext_modules=ext_modules)
