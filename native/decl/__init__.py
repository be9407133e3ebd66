"""Declaration modules for the CFFI extensions, one per subsystem, all of one shape:

    INCLUDES        C text the extension's source starts with (its headers)
    TYPES           cdef of the types and constants the extension exposes
    FUNCTIONS       cdef of the functions it exposes (and the Python callbacks it calls)
    CUSTOMIZATIONS  C text put after the includes in the extension's source
    SOURCES         the C files compiled into the extension
    INCLUDE_DIRS, LIBRARIES, COMPILE_ARGS (optional)

`build()` combines some of them into one extension, as cryptography's src/_cffi_src does. A module whose
header is also C's declares its cdef once, between "cdef begin" and "cdef end" markers in that header,
and reads it with `between_markers()`.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.dirname(HERE)
COMPILE_ARGS = ["-std=gnu11", "-Wall", "-O2", "-Werror=implicit-function-declaration"]


def load(name: str) -> ModuleType:
    """Declaration module `name` (loaded from its file: at build time this folder is no package)."""
    spec = importlib.util.spec_from_file_location(f"xos_decl_{name}", os.path.join(HERE, f"{name}.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def between_markers(header: str) -> str:
    """The cdef part of a header under native/ (between its "cdef begin" and "cdef end" comments)."""
    with open(os.path.join(NATIVE, header)) as f:
        text = f.read()
    return text[text.index("/* cdef begin"):text.index("/* cdef end */")]


def build(module: str, names: list[str]) -> Any:
    """The FFI of extension `module` made of declaration modules `names`."""
    from cffi import FFI

    mods = [load(n) for n in names]
    ffi = FFI()
    ffi.cdef("".join(m.TYPES + m.FUNCTIONS for m in mods))
    extra: list[str] = []
    for m in mods:
        extra += [a for a in getattr(m, "COMPILE_ARGS", []) if a not in extra]
    ffi.set_source(
        module,
        "".join(m.INCLUDES for m in mods) + "".join(m.CUSTOMIZATIONS for m in mods),
        sources=[s for m in mods for s in m.SOURCES],
        include_dirs=sorted({os.path.join(NATIVE, d) for m in mods for d in getattr(m, "INCLUDE_DIRS", [])}
                            | {p for m in mods for p in getattr(m, "SYSTEM_INCLUDE_DIRS", [])}),
        libraries=[lib for m in mods for lib in getattr(m, "LIBRARIES", [])],
        extra_compile_args=COMPILE_ARGS + extra,
    )
    return ffi
