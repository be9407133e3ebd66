"""Grid identities as local uids and gids on a mount, both ways: the mounting identity as the mounting user,
others by their `user.vo` account when this host has one, else nobody."""

from __future__ import annotations

import errno
import grp
import pwd

NOBODY = 65534


class Accounts:
    """Grid identities as local uids and gids, both ways."""

    def __init__(self, me: str, uid: int, gid: int) -> None:
        self.me = me
        self.vo = me.partition("@")[2]
        self.uid, self.gid = uid, gid
        self._uids: dict[str, int] = {me: uid}
        self._gids: dict[str, int] = {self.vo: gid}

    def uid_of(self, who: str) -> int:
        uid = self._uids.get(who)
        if uid is None:
            user, _, vo = who.partition("@")
            try:
                uid = pwd.getpwnam(f"{user}.{vo}").pw_uid
            except KeyError:
                uid = NOBODY
            self._uids[who] = uid
        return uid

    def gid_of(self, vo: str) -> int:
        gid = self._gids.get(vo)
        if gid is None:
            try:
                gid = grp.getgrnam(vo).gr_gid
            except KeyError:
                gid = NOBODY
            self._gids[vo] = gid
        return gid

    def who_of(self, uid: int) -> str:
        for who, u in self._uids.items():
            if u == uid and u != NOBODY:
                return who
        try:
            user, _, vo = pwd.getpwuid(uid).pw_name.partition(".")
        except KeyError:
            raise OSError(errno.EPERM, 'no grid identity') from None
        if not vo:
            raise OSError(errno.EPERM, 'no grid identity')
        return f"{user}@{vo}"

    def vo_of(self, gid: int) -> str:
        for vo, g in self._gids.items():
            if g == gid:
                return vo
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            raise OSError(errno.EPERM, 'no grid identity') from None
