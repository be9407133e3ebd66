"""`xos vo`, `xos cred` and `xos init`: virtual organizations through the VO service's management socket,
credentials, and this host's VO signing key."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from xos import paths
from xos.cli import common
from xos.errors import InvalidInput


def add(sub: Any) -> None:
    """The `vo` and `cred` command groups."""
    vo = sub.add_parser("vo", help="virtual organizations").add_subparsers(dest="verb", required=True)

    def verb(name: str, hlp: str, data: bool = True) -> argparse.ArgumentParser:
        return common.command_parser(vo, name, hlp, run, "vo", data)

    v = verb("create", "form a VO")
    v.add_argument("vo")
    v.add_argument("--owner", default="root")
    v.add_argument("--ttl", help="lifetime of the VO, e.g. 30d")
    v = verb("add", "add a member, or change their roles")
    v.add_argument("vo")
    v.add_argument("user")
    v.add_argument("--role", action="append", dest="roles")
    v.add_argument("--group", action="append", dest="groups")
    v = verb("rm", "dissolve a VO, or remove a member from it (either way its credentials are revoked)")
    v.add_argument("vo")
    v.add_argument("user", nargs="?")
    v = verb("remove", common.old_spelling("xos vo rm VO USER"))
    v.add_argument("vo")
    v.add_argument("user")
    verb("dissolve", common.old_spelling("xos vo rm VO")).add_argument("vo")
    v = verb("issue", "print a credential for a member", data=False)
    v.add_argument("vo")
    v.add_argument("user")
    v.add_argument("--ttl", default="12h")
    v = verb("revoke", "revoke a credential, or all of a member's")
    v.add_argument("--jti")
    v.add_argument("vo", nargs="?")
    v.add_argument("user", nargs="?")
    verb("ls", "VOs and members")
    verb("pubkey", "print the key that signs a VO's credentials", data=False).add_argument("vo")

    cred = sub.add_parser("cred", help="credentials").add_subparsers(dest="verb", required=True)
    c = cred.add_parser("show", help="decode and verify a credential")
    c.add_argument("file", nargs="?", help="the credential file (default: stdin)")
    common.json_flag(c)
    c.set_defaults(run=show)


def _credentials(revoked: list[dict[str, Any]]) -> int:
    # Member and VO markers (jti "member:..." / "vo:...") tell nodes to release leases; not credentials.
    return len([r for r in revoked if ":" not in r["jti"]])


def _ls(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        members = ", ".join(f"{m['user']}({','.join(m['roles'])})" if m["roles"] else m["user"]
                            for m in r["members"])
        print(f"{r['name']:16} {r['state']:10} owner={r['owner']}  members: {members}")


async def run(args: argparse.Namespace) -> int:
    """`xos vo VERB`."""
    from xos.vo.client import Client

    async with Client(args.vo_address) as vo:
        v = args.verb
        if v == "create":
            d = await vo.create(args.vo, args.owner, args.ttl)
            return common.emit(args, d, common.say(f"VO {d['name']} formed, owner {d['owner']}"))
        if v == "add":
            d = await vo.add(args.vo, args.user, args.roles, args.groups)
            return common.emit(args, d, common.say(f"{d['user']} in {d['vo']}: roles {','.join(d['roles']) or '-'}, "
                                                   f"groups {','.join(d['groups'])}"))
        if v in ("remove", "rm") and args.user:
            d = await vo.remove(args.vo, args.user)
            return common.emit(args, d, common.say(f"{args.user} removed from {args.vo}; "
                                                   f"{_credentials(d['revoked'])} credential(s) revoked"))
        if v in ("dissolve", "rm"):
            d = await vo.dissolve(args.vo)
            return common.emit(args, d, common.say(f"VO {args.vo} dissolved; {_credentials(d['revoked'])} "
                                                   "credential(s) revoked"))
        if v == "issue":
            print((await vo.issue(args.vo, args.user, args.ttl))["token"])
            return 0
        if v == "revoke":
            if args.jti is None and (args.vo is None or args.user is None):
                raise InvalidInput("name --jti ID, or VO and USER")
            d = await vo.revoke(args.jti, args.vo, args.user)
            return common.emit(args, d, common.say(f"{_credentials(d['revoked'])} credential(s) revoked"))
        if v == "pubkey":
            sys.stdout.write(await vo.public_key(args.vo))
            return 0
        return common.emit(args, await vo.ls(), _ls)


def _claims(d: dict[str, Any]) -> None:
    print(f"{d['sub']}@{d['vo']}: verified, expires in {d['expires_in']} s")
    print(f"  roles  {','.join(d.get('roles', [])) or '-'}")
    print(f"  groups {','.join(d.get('groups', [])) or '-'}")
    print(f"  id     {d.get('jti', '-')}")


def show(args: argparse.Namespace) -> int:
    """`xos cred show`: a credential verified against the VOs this host trusts (or its own VO key)."""
    from xos.identity import credential

    token = common.read_token(args.file)
    trust: Any = credential.TrustStore(common.trust_dir())
    header, payload = credential.unverified(token)
    local = os.path.join(paths.home(), "vo", "signing.key")
    if trust.key(str(payload.get("vo"))) is None and os.path.exists(local):
        key = credential.load_key(local).public_key()

        class Local:
            def key(self, vo: str, kid: str | None = None) -> Any:
                return key

        trust = Local()
    claims = credential.verify(token, trust)
    return common.emit(args, {**claims.to_json(), "verified": True, "expires_in": claims.exp - int(time.time())},
                       _claims)


def init(args: argparse.Namespace) -> int:
    """`xos init`: make this host's VO signing key, once."""
    from xos.identity import credential

    path = os.path.join(paths.home(), "vo", "signing.key")
    if os.path.exists(path):
        key = credential.load_key(path)
        print(f"signing key exists: {path} (key id {credential.key_id(key.public_key())})")
        return 0
    key = credential.new_key(path)
    print(f"signing key made: {path}, public key {path}.pub (key id {credential.key_id(key.public_key())})")
    return 0
