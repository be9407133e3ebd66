"""The one error hierarchy of xos: every error a user can cause has a stable code."""

from __future__ import annotations

import errno as _errno
import os
from typing import Any, ClassVar


class XosError(Exception):
    """Root of all xos errors; `code` is stable and shown by the CLI and the HTTP API."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_json(self) -> dict[str, Any]:
        """The body of a failed HTTP response."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail:
            body["detail"] = self.detail
        return {"error": body}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidInput(XosError):
    """Something the user typed or sent is malformed."""

    code = "invalid-input"
    http_status = 400


class BadSize(InvalidInput):
    code = "bad-size"


class BadRate(InvalidInput):
    code = "bad-rate"


class UnknownUnit(InvalidInput):
    code = "unknown-unit"


class BadName(InvalidInput):
    code = "bad-name"


class BadConfig(InvalidInput):
    """A node or daemon configuration that cannot work."""

    code = "bad-config"


class BadRequest(InvalidInput):
    """A request on a socket that is not what the protocol says."""

    code = "bad-request"


class PermissionDenied(XosError):
    """The caller may not do this."""

    code = "permission-denied"
    http_status = 403


class NotFound(XosError):
    code = "not-found"
    http_status = 404


class WorkspaceNotFound(NotFound):
    code = "workspace-not-found"


class UnknownUser(NotFound):
    code = "unknown-user"


class Conflict(XosError):
    code = "conflict"
    http_status = 409


class WorkspaceExists(Conflict):
    code = "workspace-exists"


class IllegalTransition(Conflict):
    """A lifecycle step that the current state does not allow."""

    code = "illegal-transition"


class OverCapacity(XosError):
    """Admission control refused an allocation; the message says what is short."""

    code = "over-capacity"
    http_status = 409


class Unavailable(XosError):
    """A daemon or peer cannot be reached."""

    code = "unavailable"
    http_status = 503


class KernelError(XosError):
    """The kernel refused an operation; carries errno."""

    code = "kernel-error"

    def __init__(self, message: str, errno: int, **detail: Any) -> None:
        super().__init__(f"{message}: {os.strerror(errno)} ({_errno.errorcode.get(errno, errno)})",
                         errno=errno, **detail)
        self.errno = errno


class MissingFeature(KernelError):
    """The kernel or the machine lacks something xos needs; the message names it."""

    code = "missing-feature"

    def __init__(self, message: str, **detail: Any) -> None:
        XosError.__init__(self, message, **detail)
        self.errno = _errno.ENOSYS


class SpawnError(KernelError):
    """A step between fork and exec failed in the child; `step` names it."""

    code = "spawn-failed"
    http_status = 422

    def __init__(self, step: str, errno: int, program: str) -> None:
        super().__init__(f"cannot start {program}: step {step} failed", errno, step=step, program=program)
        self.step = step


class ExternalError(XosError):
    """An external program xos drives (runc, CRIU) failed; its own output is attached."""

    code = "external-error"


class FsError(XosError):
    """A grid file-system call refused; `errno` is what the FUSE client returns for it."""

    code = "fs-error"
    http_status = 400
    errno: ClassVar[int] = _errno.EIO


def _fs_error(name: str, code: str, err: int, status: int) -> type[FsError]:
    return type(name, (FsError,), {"code": code, "errno": err, "http_status": status,
                                   "__doc__": f"{os.strerror(err)} ({code})."})


# One class per errno the file system reports, so the code survives the HTTP hop and the FUSE client
# turns it back into the same errno.
NoSuchFile = _fs_error("NoSuchFile", "no-such-file", _errno.ENOENT, 404)
FileExists = _fs_error("FileExists", "file-exists", _errno.EEXIST, 409)
NotADirectory = _fs_error("NotADirectory", "not-a-directory", _errno.ENOTDIR, 409)
IsADirectory = _fs_error("IsADirectory", "is-a-directory", _errno.EISDIR, 409)
DirectoryNotEmpty = _fs_error("DirectoryNotEmpty", "directory-not-empty", _errno.ENOTEMPTY, 409)
AccessDenied = _fs_error("AccessDenied", "access-denied", _errno.EACCES, 403)
NotPermitted = _fs_error("NotPermitted", "not-permitted", _errno.EPERM, 403)
BadPath = _fs_error("BadPath", "bad-path", _errno.EINVAL, 400)
NameTooLong = _fs_error("NameTooLong", "name-too-long", _errno.ENAMETOOLONG, 400)
NoSuchAttribute = _fs_error("NoSuchAttribute", "no-such-attribute", _errno.ENODATA, 404)
StaleCapability = _fs_error("StaleCapability", "capability-stale", _errno.ESTALE, 409)
CapabilityInvalid = _fs_error("CapabilityInvalid", "capability-invalid", _errno.EACCES, 403)
ObjectCorrupt = _fs_error("ObjectCorrupt", "object-corrupt", _errno.EIO, 409)
NoSpace = _fs_error("NoSpace", "no-space", _errno.ENOSPC, 507)
NoReplica = _fs_error("NoReplica", "no-replica", _errno.EIO, 503)
FileRemoved = _fs_error("FileRemoved", "file-removed", _errno.ESTALE, 410)
TooManyLinks = _fs_error("TooManyLinks", "too-many-links", _errno.EMLINK, 409)


_BY_CODE: dict[str, type[XosError]] = {}


def _register(cls: type[XosError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


def from_json(body: dict[str, Any], status: int = 500) -> XosError:
    """Rebuild the error a peer reported, keeping its code."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return Unavailable(f"peer answered HTTP {status} without an error body")
    code = str(err.get("code", "internal"))
    message = str(err.get("message", ""))
    if code not in _BY_CODE:
        _register(XosError)  # classes defined in modules imported since
    # A code this process never imported (a node's own) keeps its meaning through the HTTP status.
    by_status = {400: InvalidInput, 403: PermissionDenied, 404: NotFound, 409: Conflict, 503: Unavailable}
    cls = _BY_CODE.get(code) or by_status.get(status, XosError)
    exc = XosError.__new__(cls)
    XosError.__init__(exc, message, **(err.get("detail") or {}))
    if code not in _BY_CODE:
        exc.code = code  # type: ignore[misc]  # an unknown code from a newer peer stays visible
    return exc


_register(XosError)
