"""Kernel keyrings: add_key(2), keyctl(2), without libkeyutils."""

INCLUDES = """
#include <linux/keyctl.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>
typedef int32_t key_serial_t;
"""

TYPES = """
typedef int32_t key_serial_t;
static const int KEY_SPEC_THREAD_KEYRING;
static const int KEY_SPEC_PROCESS_KEYRING;
static const int KEY_SPEC_SESSION_KEYRING;
static const int KEY_SPEC_USER_KEYRING;
static const int KEYCTL_GET_KEYRING_ID;
static const int KEYCTL_JOIN_SESSION_KEYRING;
static const int KEYCTL_REVOKE;
static const int KEYCTL_CHOWN;
static const int KEYCTL_SETPERM;
static const int KEYCTL_UNLINK;
static const int KEYCTL_SEARCH;
static const int KEYCTL_READ;
static const int KEYCTL_INVALIDATE;
"""

FUNCTIONS = """
key_serial_t xos_add_key(const char *, const char *, const void *, size_t, key_serial_t);
long xos_keyctl(int, unsigned long, unsigned long, unsigned long, unsigned long);
"""

CUSTOMIZATIONS = """
key_serial_t xos_add_key(const char *type, const char *desc, const void *payload,
                         size_t plen, key_serial_t ring)
{
    return (key_serial_t)syscall(SYS_add_key, type, desc, payload, plen, ring);
}

long xos_keyctl(int op, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)
{
    return syscall(SYS_keyctl, op, a2, a3, a4, a5);
}
"""
SOURCES: list[str] = []
