"""CFFI (API mode) builder of `xos._native._sys`: spawn, namespaces, pidfd, keyring, safe paths."""

import importlib.util
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = ["spawn", "namespace", "pidfd", "keyring", "checksum", "safepath"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"xos_decl_{name}", os.path.join(HERE, "decl", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build() -> FFI:
    """Combine the declaration modules into one FFI, as cryptography does."""
    ffi = FFI()
    mods = [_load(n) for n in MODULES]
    ffi.cdef("typedef unsigned int gid_t;\n" + "".join(m.TYPES + m.FUNCTIONS for m in mods))
    ffi.set_source(
        "xos._native._sys",
        "".join(m.INCLUDES for m in mods) + "".join(m.CUSTOMIZATIONS for m in mods),
        sources=[s for m in mods for s in m.SOURCES],
        include_dirs=[HERE],
        extra_compile_args=["-std=gnu11", "-Wall", "-Werror=implicit-function-declaration"],
    )
    return ffi


ffi = build()

if __name__ == "__main__":
    ffi.compile(verbose=True)
