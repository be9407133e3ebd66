"""The MRC's requests of directory lease holders: leases granted and renewed, what a holder made, linked
and removed by itself, and the recalls it is to answer."""

from __future__ import annotations

import base64
import collections
import stat
from collections.abc import Callable
from typing import Any, TypeGuard

from xos.errors import InvalidInput, Unavailable, XosError
from xos.fs.layout import INLINE_MAX
from xos.fs.mrc.delegations import Delegations
from xos.fs.mrc.leases import POLL, RESERVE, TERM, Leases, Recall
from xos.fs.mrc.made import renumbered_by
from xos.fs.mrc.records import Caller, Inode, Made
from xos.fs.mrc.replicas import ReplicaManager
from xos.fs.mrc.store import Catalogue
from xos.wire.codec import field, unb64


def _seconds(t: Any) -> TypeGuard[float]:
    """Whether `t` is a time a lease holder may give: seconds since 1970, a number within 2^40 either way."""
    return isinstance(t, (int, float)) and not isinstance(t, bool) and abs(t) < 1 << 40


def _made_content(x: Any) -> Made:
    """The content and times a lease holder gave a file it wrote before it sent it."""
    if not isinstance(x, dict):
        raise InvalidInput("a made file's content is an object", field="files")
    data = unb64(x.get("inline"), "inline")
    if len(data) > INLINE_MAX:
        raise InvalidInput(f"a made file's content is over {INLINE_MAX} bytes", field="files")
    times: list[float] = []
    for k in ("atime", "mtime", "ctime"):
        t = x.get(k)
        if not _seconds(t):
            raise InvalidInput("a made file's atime, mtime and ctime are seconds since 1970", field="files")
        times.append(float(t))
    return Made(data, *times)


class LeaseOps:
    """The MRC's handlers for directory lease holders (a mixin of MRC)."""

    cat: Catalogue
    leases: Leases
    delegations: Delegations
    replicas: ReplicaManager
    counts: collections.Counter[str]
    cap: Callable[[Inode, Caller, bool], str]
    xloc: Callable[[Inode], dict[str, Any] | None]

    def _lease(self, dir_ino: int, c: Caller, inos: bool) -> dict[str, Any]:
        """A lease on directory `dir_ino` for the caller's session if it may have one now (term 0: not)."""
        term = self.leases.grant(dir_ino, c) if dir_ino and "w" in c.rights else 0.0
        out: dict[str, Any] = {"dir": dir_ino, "term": term}
        if term and inos:
            r = self.cat.reserve(RESERVE)
            self.leases.reserve(c, r)
            out["inos"] = [r.start, r.stop]
        return out

    async def op_made(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """Files a lease holder made in a directory: [name, inode number, mode, time] each, and for a file
        written before it was sent, a fifth element: {"inline": its content in base64, "atime", "mtime",
        "ctime"}. Each that names an inode number reserved for it gets that number."""
        dir_ino, delegate = field(b, "dir", int), field(b, "delegate", bool, False)
        mine = self.leases.reserved(c)
        files = []
        for f in field(b, "files", list):
            if not (isinstance(f, list) and len(f) in (4, 5) and isinstance(f[1], int) and isinstance(f[2], int)
                    and _seconds(f[3])):
                raise InvalidInput("each of files is [name, inode number, mode, time(, content)]", field="files")
            files.append((f[0], f[1] if any(f[1] in r for r in mine) else None, f[2], float(f[3]),
                          _made_content(f[4]) if len(f) == 5 else None))
        out = self.cat.made(v, dir_ino, files, c)
        out["lease"] = self._renewed(dir_ino, c)
        if delegate:
            wrote = {out["made"][f[0]] for f in files if f[4] is not None and f[0] in out["made"]}
            out.update(self._delegated(dict.fromkeys(wrote, dir_ino), wrote, c))
        return out

    def _delegated(self, files: dict[int, int], wrote: set[int], c: Caller) -> dict[str, Any]:
        """Files a lease holder made or linked ({file: the directory it did so in}), delegated to it as an open
        to read would be: what that open answers as they are now, but the content of those it sent (`wrote`)
        ({"opened": {inode number: ...}, "delegated"})."""
        trails: dict[int, list[int]] = {}
        opened: dict[int, dict[str, Any]] = {}
        for node in self.cat.inodes(list(files)):
            d = files[node.ino]
            try:  # a link needs no right to read the file: nor does its delegation give one
                self.cat.may_open(node, c, False)
                trail = trails[d] if d in trails else trails.setdefault(d, self.cat.ancestors(d))
            except XosError:  # or its directory removed since, in the same call: not delegated, the rest stands
                continue
            if not stat.S_ISREG(node.mode) or not self.delegations.grant(node.ino, trail, c):
                continue
            o = opened[node.ino] = {"attrs": node.attrs(), "fid": node.fid, "cap": self.cap(node, c, False),
                                    "epoch": node.epoch, "xloc": self.xloc(node)}
            if node.inline is not None and node.ino not in wrote:
                o["inline"] = base64.b64encode(node.inline).decode()
        return {"opened": opened, "delegated": {"term": TERM, "instance": self.delegations.instance}}

    @staticmethod
    def _to_delegate(ch: dict[str, Any], out: dict[str, Any], files: dict[int, int], wrote: set[int]) -> None:
        """The files a made or linked change (`ch`, answered `out`) made or linked, into `files` and `wrote`."""
        if ch["op"] == "made":
            for f in ch["files"]:
                if len(f) == 5 and f[0] in out["made"]:
                    files[out["made"][f[0]]] = ch["dir"]
                    wrote.add(out["made"][f[0]])
        else:
            linked = set(out["linked"])
            files.update((n[1], ch["dir"]) for n in ch["links"] if n[2] in linked)

    def _renewed(self, dir_ino: int, c: Caller) -> dict[str, Any]:
        """The sender of changes in a directory holds it one more term: whoever looks meanwhile recalls it and
        waits while it sends what it made. A sender lagging its changes by more than a term (a catalogue on
        PostgreSQL, a standby taking over) would otherwise have its newest files missing from others'
        listings. The answer's term is how long it may go on changing the directory by itself (0: recalled,
        or others wait): a program revisiting many directories (git's objects) keeps them leased."""
        if "w" in c.rights and not self.leases.renew(dir_ino, c):
            self.leases.grant(dir_ino, c)
        return {"dir": dir_ino, "term": self.leases.lasts(dir_ino, c)}

    async def op_changes(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """What a lease holder changed by itself, in the order it did: {"op": "made" or "unlinked", and that
        op's body} each, each in its own transaction; an answer each, an error one's {"error": ...}. A lease
        in the way of one is recalled and waited for here: the call as a whole never runs twice."""
        changes = field(b, "changes", list)
        ops = {"made": self.op_made, "unlinked": self.op_unlinked, "linked": self.op_linked}
        if not all(isinstance(ch, dict) and ch.get("op") in ops for ch in changes):
            raise InvalidInput('each change is {"op": "made", "unlinked" or "linked", ...}', field="changes")
        answers = []
        renumbered: dict[int, int] = {}  # a file made here under a number it could not have: the number it got
        # Files made (and written) or linked in this call, to be delegated once all of it is done: as they
        # are after the names removed in it too ({file: its directory}, and the files written).
        files: dict[int, int] = {}
        wrote: set[int] = set()
        for ch in changes:
            op, key = ops[ch["op"]], {"unlinked": "names", "linked": "links"}.get(ch["op"], "")
            delegate = ch.get("delegate") is True and ch["op"] != "unlinked"
            if delegate:
                ch = {**ch, "delegate": False}
            if key and renumbered and isinstance(ch.get(key), list):
                ch = {**ch, key: [[n[0], renumbered.get(n[1], n[1]), *n[2:]] if isinstance(n, list) and len(n) > 1
                                  and isinstance(n[1], int) else n for n in ch[key]]}
            self.counts[ch["op"]] += 1
            for _ in range(16):
                try:
                    answers.append(await op(v, c, ch))
                    if ch["op"] == "made":
                        renumbered.update(renumbered_by(ch, answers[-1]))
                    if delegate:
                        self._to_delegate(ch, answers[-1], files, wrote)
                    break
                except Recall as r:
                    await r.wait(c.session)
                except XosError as e:
                    answers.append(e.to_json())
                    break
            else:
                answers.append(Unavailable("waited on too many directory leases").to_json())
        return {"answers": answers, **(self._delegated(files, wrote, c) if files else {})}

    async def op_recalls(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """The directories this session is to hand back and the files it is to forget (waits up to `wait`
        seconds for some). `ack`: the token of the last answer, whose files the session forgot."""
        if not c.session:
            raise InvalidInput("recalls are per session: send X-Xos-Session", field="X-Xos-Session")
        wait = field(b, "wait", (int, float), POLL)
        self.delegations.polling(c, field(b, "ack", str, ""))
        try:
            dirs = await self.leases.recalls(c, wait, lambda: self.delegations.pending(c))
        finally:
            token, files = self.delegations.polled(c)
        return {"dirs": dirs, "files": files, "token": token, "instance": self.delegations.instance, "term": TERM}

    async def op_hand_back(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        dirs = field(b, "dirs", list)
        if not all(isinstance(d, int) for d in dirs):
            raise InvalidInput("dirs are inode numbers", field="dirs")
        self.leases.hand_back(c, dirs)
        return {}

    async def op_linked(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """Hard links a lease holder made in a directory, in order: [name, inode number, new name, time] each;
        with `delegate`, the files linked are delegated to it (as `op_made`'s)."""
        links, delegate = field(b, "links", list), field(b, "delegate", bool, False)
        if not all(isinstance(n, list) and len(n) == 4 and isinstance(n[0], str) and isinstance(n[1], int)
                   and isinstance(n[2], str) and _seconds(n[3]) for n in links):
            raise InvalidInput("each of links is [name, inode number, new name, time]", field="links")
        out = self.cat.linked(v, dir_ino := field(b, "dir", int), [(n[0], n[1], n[2], float(n[3])) for n in links], c)
        out["lease"] = self._renewed(dir_ino, c)
        if delegate:
            linked = set(out["linked"])
            out.update(self._delegated({n[1]: dir_ino for n in links if n[2] in linked}, set(), c))
        return out

    async def op_unlinked(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """Names a lease holder removed in a directory, in order: [name, inode number, time] each, and a fourth
        element true for an empty directory."""
        dir_ino = field(b, "dir", int)
        names = field(b, "names", list)
        if not all(isinstance(n, list) and len(n) in (3, 4) and isinstance(n[0], str) and isinstance(n[1], int)
                   and _seconds(n[2]) and (len(n) == 3 or isinstance(n[3], bool)) for n in names):
            raise InvalidInput("each of names is [name, inode number, time(, directory)]", field="names")
        out = self.cat.unlinked(v, dir_ino, [(n[0], n[1], float(n[2]), len(n) == 4 and n[3]) for n in names], c)
        self.replicas.wake()
        out["lease"] = self._renewed(dir_ino, c)
        return out
