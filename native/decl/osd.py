"""An OSD's object reads and writes on native threads (fs/osdread.c, osdgrant.c, osdwrite.c), and the two
Python callbacks they use."""

from xos_decl import between_markers  # type: ignore[import-not-found]  # see load() in __init__.py

INCLUDES = """
#include "osdread.h"
"""

TYPES = between_markers("fs/osdread.h")

FUNCTIONS = """
extern "Python+C" int xo_check(const char *auth, const char *cap, const char *fid, int write, double *until);
extern "Python+C" void xo_adopt(int fd, const char *buf, size_t n, const char *peer);
"""

CUSTOMIZATIONS = ""
SOURCES = ["native/fs/osdread.c", "native/fs/osdgrant.c", "native/fs/osdwrite.c", "native/fs/osdtls.c"]
INCLUDE_DIRS = ["fs"]
LIBRARIES = ["isal", "ssl", "crypto", "pthread"]
COMPILE_ARGS = ["-Wextra"]
