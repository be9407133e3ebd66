"""The command line's conventions, read from its parser: daemons' addresses from flags or the environment,
`--json` wherever data is printed, `ls` and `rm` in every group that lists and removes, old spellings kept."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

from xos.cli.main import parser

# Commands that print no data (a stream, a token, a path, or a line saying what was done to this host).
NO_DATA = {"ws exec", "ws run", "job run", "job output", "job watch", "vo issue", "vo pubkey", "node metrics",
           "node trust", "node untrust", "node doctor", "node install", "node uninstall", "fs mount", "fs umount",
           "fs cp", "host init", "host trust", "ca init", "ca sign", "ca revoke", "ca publish", "service install",
           "service uninstall", "init"}


def leaves(p: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, by its words."""
    out = {}
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {prefix.strip(): p}
    for name, child in subs[0].choices.items():
        out.update(leaves(child, f"{prefix} {name}"))
    return out


def options(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions for o in a.option_strings}


def test_every_command_that_prints_data_takes_json() -> None:
    missing = [c for c, p in leaves(parser()).items()
               if not c.startswith("serve ") and c not in NO_DATA and "--json" not in options(p)]
    assert not missing, missing


@pytest.mark.parametrize("flag,env,words", [
    ("--node", "XOS_NODE", ["ws", "ls"]), ("--vo", "XOS_VO", ["vo", "ls"]),
    ("--aem", "XOS_AEM", ["job", "ls"]), ("--mrc", "XOS_MRC", ["fs", "vol", "ls"])])
def test_a_daemons_address_comes_from_its_flag_else_its_variable(monkeypatch, flag, env, words) -> None:
    monkeypatch.setenv(env, "/from/env")
    dest = flag[2:] + "_address"
    assert getattr(parser().parse_args(words), dest) == "/from/env"
    assert getattr(parser().parse_args([*words, flag, "/from/flag"]), dest) == "/from/flag"


def test_every_command_talking_to_a_daemon_names_it_and_takes_a_credential_where_it_acts_as_someone() -> None:
    for c, p in leaves(parser()).items():
        group = c.split()[0]
        want = {"ws": "--node", "vo": "--vo", "job": "--aem", "acct": "--aem"}.get(group)
        if want:
            assert want in options(p), c
        if group in ("job", "acct") or c in ("node ls", "fs vol create", "fs vol ls", "fs vol rm", "fs osd ls",
                                             "fs mount", "fs stat", "fs cp", "ws create", "ws run"):
            assert "--cred" in options(p), c


def test_groups_that_list_and_remove_say_ls_and_rm_and_keep_the_old_spellings() -> None:
    cmds = set(leaves(parser()))
    for group in ("ws", "job", "vo", "fs vol"):
        assert {f"{group} ls", f"{group} rm"} <= cmds, group
    assert {"node ls", "fs osd ls"} <= cmds
    assert {"job purge", "vo dissolve", "vo remove", "fs mkvol", "fs lsvol", "fs rmvol", "fs osds", "nodes"} <= cmds


def test_the_help_lists_what_users_type_first_and_the_daemons_last() -> None:
    out = subprocess.run([sys.executable, "-m", "xos", "--help"], capture_output=True, text=True).stdout
    order = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()]
    assert order.index("ws") < order.index("job") < order.index("fs") < order.index("serve")
    assert order[-2:] == ["serve", "init"], order


@pytest.mark.parametrize("argv,message", [
    (["fs", "vol", "ls"], "no MRC: give --mrc URL or set XOS_MRC"),
    (["job", "ls", "--aem", "https://127.0.0.1:9"], "no credential: give --cred FILE or set XOS_CREDENTIAL")])
def test_a_missing_address_or_credential_is_one_line_with_a_code(argv, message) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("XOS_MRC", "XOS_CREDENTIAL")}
    r = subprocess.run([sys.executable, "-m", "xos", *argv], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr == f"xos: error invalid-input: {message}\n", r.stderr


def _serve_args(tmp_path, role: str, toml: str, *flags: str) -> argparse.Namespace:
    from xos.cli import serve

    cfg = tmp_path / f"{role}.toml"
    cfg.write_text(toml)
    argv = ["serve", role, "--config", str(cfg), *flags]
    args = parser().parse_args(argv)
    args.argv = argv
    return serve.configured(args, role)


def test_a_daemons_config_file_sets_any_option_and_the_command_line_wins(tmp_path) -> None:
    args = _serve_args(tmp_path, "aem", '[aem]\nlisten = "10.0.0.1:7300"\npoll = 0.5\nmax_output = "2M"\n'
                       'vo_urls = ["https://vo:7001"]\nnode = ["n1=https://n1:7200"]\n', "--poll", "2")
    assert (args.listen, args.poll, args.max_output) == ("10.0.0.1:7300", 2.0, 2 << 20)  # --poll wins
    assert args.vo_urls == ["https://vo:7001"] and args.node == ["n1=https://n1:7200"]
    osd = _serve_args(tmp_path, "osd", '[osd]\nid = "osd1"\ndir = "/srv/osd1"\nmrc = "https://mrc:32636"\n'
                      'host_dir = "/etc/xos/host"\n')
    assert (osd.id, osd.dir, osd.mrc, osd.host_dir) == ("osd1", "/srv/osd1", "https://mrc:32636", "/etc/xos/host")


@pytest.mark.parametrize("toml,message", [
    ('[aem]\ncolour = "red"\n', "unknown aem option(s) colour"),
    ('[aem]\nvo_urls = "https://vo:7001"\n', "vo_urls must be a list"),
    ('[aem]\nmax_output = "lots"\n', "max_output = 'lots'"),
    ("[aem\n", "cannot be read"),
])
def test_a_config_file_with_a_mistake_is_refused_in_one_line_saying_which(tmp_path, toml, message) -> None:
    from xos.errors import InvalidInput

    with pytest.raises(InvalidInput, match=re.escape(message)):
        _serve_args(tmp_path, "aem", toml)


def test_an_osd_without_its_needed_options_says_which_in_one_line(tmp_path) -> None:
    cfg = tmp_path / "osd.toml"
    cfg.write_text('[osd]\nid = "osd1"\n')
    r = subprocess.run([sys.executable, "-m", "xos", "serve", "osd", "--config", str(cfg), "--dir", "/x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == ("xos: error invalid-input: xos serve osd needs --mrc (on the "
                                              "command line or in its configuration file's [osd] table)\n")
