"""Build steps pyproject.toml cannot declare: the CFFI extension and xos-init.

CFFI's `cffi_modules` has no pyproject form, and xos-init is an executable,
not an extension; both are built by `pip install` like the Cython module.
"""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

# (output name inside xos/_native, sources, extra flags); a failure to compile one fails the build.
PROGRAMS = [
    ("xos-init", ["native/init.c"], ["-O2", "-static-pie"]),
]


class BuildNative(build_ext):
    """build_ext that also links the C programs the package ships."""

    def run(self) -> None:
        super().run()
        if self.inplace:
            outdir = self.get_finalized_command("build_py").get_package_dir("xos._native")
        else:
            outdir = os.path.join(self.build_lib, "xos", "_native")
        os.makedirs(outdir, exist_ok=True)
        for name, sources, flags in PROGRAMS:
            objects = self.compiler.compile(sources, output_dir=self.build_temp, extra_postargs=["-Wall", *flags])
            self.compiler.link_executable(objects, name, output_dir=outdir, extra_postargs=flags)


setup(cffi_modules=["native/build_sys.py:ffi"], cmdclass={"build_ext": BuildNative})
