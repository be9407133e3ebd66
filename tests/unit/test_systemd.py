"""The daemons' systemd units: each passes systemd-analyze verify without a word, the daemons other than the
node are confined (systemd-analyze security rates them), and installing never overwrites a foreign unit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from xos import systemd
from xos.errors import InvalidInput


def _analyze(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing (Debian package systemd)"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_every_unit_verifies_without_a_warning(tmp_path):
    for role in systemd.ROLES:
        systemd.install(role, str(tmp_path))
    shutil.copy(tmp_path / "xos-osd@.service", tmp_path / "xos-osd@a1.service")  # an instance of the template
    for name in sorted(os.listdir(tmp_path)):
        r = _analyze("verify", f"./{name}", cwd=str(tmp_path))
        assert r.returncode == 0 and not r.stderr.strip(), (name, r.stderr)
    # the check sees a wrong unit
    with open(tmp_path / "xos-vo.service", "a") as f:
        f.write("[Service]\nNoSuchSetting=1\n")
    assert "NoSuchSetting" in _analyze("verify", "./xos-vo.service", cwd=str(tmp_path)).stderr


def test_the_daemons_but_the_node_are_confined(tmp_path):
    scores = {}
    for role in systemd.ROLES:
        systemd.install(role, str(tmp_path))
        name = systemd.unit_name(role).replace("@.", "@a1.")
        if role == "osd":
            shutil.copy(tmp_path / "xos-osd@.service", tmp_path / name)
        r = _analyze("security", "--offline=true", f"./{name}", cwd=str(tmp_path))
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
        assert m, r.stdout[-500:] + r.stderr
        scores[role] = float(m.group(1))
    text = {role: systemd.unit(role) for role in systemd.ROLES}
    for role in ("vo", "aem", "mrc", "osd"):
        assert "DynamicUser=yes" in text[role] and "\nCapabilityBoundingSet=\n" in text[role]
        assert scores[role] < 4.0, scores  # systemd's scale: below 4 is "OK", the node (root) is ~9.6
    assert "DynamicUser" not in text["node"]


def test_install_and_uninstall_touch_only_xos_units(tmp_path):
    foreign = tmp_path / "xos-vo.service"
    foreign.write_text("[Unit]\nDescription=someone else's\n")
    with pytest.raises(InvalidInput):
        systemd.install("vo", str(tmp_path))
    with pytest.raises(InvalidInput):
        systemd.uninstall("vo", str(tmp_path))
    assert foreign.read_text() == "[Unit]\nDescription=someone else's\n"
    path = systemd.install("aem", str(tmp_path))
    assert systemd.uninstall("aem", str(tmp_path)) and not os.path.exists(path)
    assert not systemd.uninstall("aem", str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "xos", "service", "install", "root", "--unit-dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "error invalid-input" in r.stderr, r.stderr
