"""Build steps pyproject.toml cannot declare: the CFFI extension, xos-init, the PAM and NSS modules.

CFFI's `cffi_modules` has no pyproject form; xos-init is an executable and pam_xos.so and
libnss_xos.so.2 are plain shared libraries, not Python extensions. All are built by `pip install`
like the Cython module, and a compiler error fails the build.
"""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

# (output name inside xos/_native, sources, extra flags); a failure to compile one fails the build.
PROGRAMS = [
    ("xos-init", ["native/node/init.c", "native/node/safepath.c"], ["-O2", "-static-pie"]),
]


# (output name, sources, link flags, libraries): the C clients of the identity socket (pam/).
CLIENT = ["pam/common.c"]
LIBRARIES = [
    ("libnss_xos.so.2", [*CLIENT, "pam/nss_cache.c", "pam/nss_common.c", "pam/nss_passwd.c",
                         "pam/nss_group.c"],
     ["-Wl,--version-script=pam/nss_xos.map", "-Wl,-soname,libnss_xos.so.2"], []),
    ("pam_xos.so", [*CLIENT, "pam/pam_xos.c"], ["-Wl,--version-script=pam/pam_xos.map"], ["pam"]),
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
        for name, sources, flags, libs in LIBRARIES:
            objects = self.compiler.compile(sources, output_dir=os.path.join(self.build_temp, name),
                                            extra_postargs=["-Wall", "-Wextra", "-fPIC", "-std=gnu11"])
            self.compiler.link_shared_object(objects, name, output_dir=outdir, libraries=libs, extra_postargs=flags)


setup(cffi_modules=["native/build.py:sys_ffi", "native/build.py:fuse_ffi", "native/build.py:osd_ffi"],
      cmdclass={"build_ext": BuildNative})
