"""Opens beneath a directory that never follow a link nor block (native/node/safepath.c), and the
file-system identity of the calling thread (setfsuid(2), setfsgid(2))."""

INCLUDES = """
#include <sys/fsuid.h>
#include "safepath.h"
"""

TYPES = """
#define XOS_KIND_REG 1
#define XOS_KIND_DIR 2
static const int XOS_EKIND;
"""

FUNCTIONS = """
int xos_open_beneath(int, const char *, int, unsigned int, int);
int setfsuid(unsigned int);
int setfsgid(unsigned int);
"""

CUSTOMIZATIONS = ""
SOURCES: list[str] = ["native/node/safepath.c"]
INCLUDE_DIRS = ["node"]
