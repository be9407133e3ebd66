"""CFFI (API mode) builders of the native extensions, each made of declaration modules (decl/):

    xos._native._sys   spawn, namespaces, pidfd, keyring, checksums, safe paths (node/)
    xos._native._fuse  the grid file system's FUSE loop on libfuse 3 (fs/gridfuse.c and its parts)
    xos._native._osd   an OSD's object reads and writes on native threads (fs/osdread.c and its parts)

setup.py names each as native/build.py:NAME."""

import importlib.util
import os
import sys

_spec = importlib.util.spec_from_file_location(
    "xos_decl", os.path.join(os.path.dirname(os.path.abspath(__file__)), "decl", "__init__.py"))
assert _spec is not None and _spec.loader is not None
decl = importlib.util.module_from_spec(_spec)
sys.modules["xos_decl"] = decl  # the declaration modules import their helpers from it
_spec.loader.exec_module(decl)

sys_ffi = decl.build("xos._native._sys", ["spawn", "namespace", "pidfd", "keyring", "checksum", "safepath"])
fuse_ffi = decl.build("xos._native._fuse", ["fuse"])
osd_ffi = decl.build("xos._native._osd", ["osd"])

if __name__ == "__main__":
    for ffi in (sys_ffi, fuse_ffi, osd_ffi):
        ffi.compile(verbose=True)
