"""The README's "Install a grid on three hosts", run as it stands: each line on its host (head is this
namespace on the test grid's bridge, n1 and n2 are a test grid's node namespaces), the addresses mapped to
the grid's, the hosts' directories to temporary ones, `scp` to a copy between them. The lines that make
PostgreSQL's role and database are what the test's own cluster (xos.testing.postgres) does. At the end a
member's job ran on a node and a file written on head was read on n2."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys

from xos.testing import GRID_NET, TestGrid, wait_for
from xos.testing.postgres import TestPostgres

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")
ADDRESSES = {"10.0.0.1": f"{GRID_NET}.1", "10.0.0.11": f"{GRID_NET}.10", "10.0.0.12": f"{GRID_NET}.11"}
DB = "postgresql://xos@10.0.0.1/xos"


def section_lines() -> list[tuple[str, str]]:
    """(host, command) of each line of the section's block, the host as its comments say ("# on n1")."""
    with open(README) as f:
        section = f.read().split("## Install a grid on three hosts\n", 1)[1].split("\n## ", 1)[0]
    host, out = "", []
    for line in section.splitlines():
        if not line.startswith("    "):
            continue
        text = line.strip()
        if text.startswith("#"):
            host = re.match(r"# on (\w+)", text).group(1)  # type: ignore[union-attr]
            continue
        command = re.split(r"\s+#\s", text, maxsplit=1)[0].strip()
        if command:
            out.append((host, command))
    return out


class Hosts:
    """Where each host's lines run: its namespace (None: this one), $XOS_HOME, $XOS_RUN, working directory."""

    def __init__(self, base: str, grid: TestGrid, pg_url: str) -> None:
        self.base, self.grid, self.pg_url = base, grid, pg_url
        self.nodes = {"n1": grid.nodes[0], "n2": grid.nodes[1]}
        self.daemons: list[subprocess.Popen[bytes]] = []
        for host in ("head", "n1", "n2"):
            os.makedirs(self.work(host), exist_ok=True)

    def home(self, host: str) -> str:
        return self.nodes[host].home if host in self.nodes else os.path.join(self.base, "head", "home")

    def run_dir(self, host: str) -> str:
        return self.nodes[host].run if host in self.nodes else os.path.join(self.base, "head", "run")

    def work(self, host: str) -> str:
        return os.path.join(self.base, host, "work")

    def env(self, host: str) -> dict[str, str]:
        path = f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        return {**os.environ, "PATH": path, "XOS_HOME": self.home(host), "XOS_RUN": self.run_dir(host)}

    def mapped(self, host: str, command: str) -> str:
        """The line as it runs here: the database, the addresses, the hosts' directories and names."""
        command = command.replace(DB, self.pg_url)
        for real, here in ADDRESSES.items():
            command = re.sub(rf"(?<![\d.]){re.escape(real)}(?![\d])", here, command)
        command = command.replace("/var/lib/xos", self.home(host)).replace("/root/grid-ca",
                                                                         os.path.join(self.base, "head", "grid-ca"))
        command = command.replace("/srv/osd", os.path.join(self.base, host, "osd"))
        for name, node in self.nodes.items():
            command = command.replace(f"--name {name} ", f"--name {node.name} ")
        return command

    def argv(self, host: str, command: str) -> list[str]:
        inner = ["bash", "-c", command]
        if host in self.nodes:
            return ["nsenter", f"--net={self.nodes[host].netns_path}", "--", *inner]
        return inner

    def scp(self, host: str, command: str) -> None:
        """scp FROM:PATH TO: the file of another host (its working directory, or its mapped path) copied."""
        _, src, dst = shlex.split(command)
        other, _, path = src.partition(":")
        path = self.mapped(other, path)
        src_path = path if path.startswith("/") else os.path.join(self.work(other), path)
        dst_path = self.mapped(host, dst)
        dst_path = dst_path if dst_path.startswith("/") else os.path.join(self.work(host), dst_path)
        shutil.copyfile(src_path, dst_path)

    def run(self, host: str, command: str) -> str:
        """A line that ends: its output; fails the test, with what it said, if it failed."""
        if command.startswith("scp "):
            self.scp(host, command)
            return ""
        r = subprocess.run(self.argv(host, self.mapped(host, command)), cwd=self.work(host), env=self.env(host),
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, f"on {host}: {command}\n{r.stdout}{r.stderr}"
        return r.stdout

    def serve(self, host: str, command: str) -> None:
        """A daemon's line: started in the background, waited for until it listens (a node: as a test node)."""
        line = self.mapped(host, command)
        if command.startswith("xos serve node"):
            node = self.nodes[host]
            node.extra_args = shlex.split(line)[3:]
            node.start()
            return
        log = open(os.path.join(self.base, host, f"{shlex.split(line)[2]}.log"), "ab")
        self.daemons.append(subprocess.Popen(self.argv(host, line), cwd=self.work(host), env=self.env(host),
                                             stdout=log, stderr=log, stdin=subprocess.DEVNULL))
        log.close()
        listen = shlex.split(line)[shlex.split(line).index("--listen") + 1]
        address, _, port = listen.rpartition(":")
        proc = self.daemons[-1]

        def listening() -> bool:
            assert proc.poll() is None, f"on {host}: {command} exited:\n{self.log(host, line)}"
            with socket.socket() as s:
                return s.connect_ex((address, int(port))) == 0

        wait_for(listening, 30, f"{command} to listen")

    def log(self, host: str, line: str) -> str:
        with open(os.path.join(self.base, host, f"{shlex.split(line)[2]}.log")) as f:
            return f.read()[-3000:]

    def stop(self) -> None:
        for proc in reversed(self.daemons):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.daemons:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_the_readmes_three_hosts_run_as_written() -> None:
    lines = section_lines()
    hosts_named = {h for h, _ in lines}
    assert hosts_named == {"head", "n1", "n2"}, hosts_named
    with TestPostgres() as pg, TestGrid(2, start=False) as grid:
        hosts = Hosts(grid.base, grid, pg.url("xos"))
        outputs = []
        try:
            for host, command in lines:
                if command.startswith("runuser -u postgres"):
                    continue  # the test's cluster made them
                if command.startswith("xos serve "):
                    hosts.serve(host, command)
                else:
                    outputs.append(hosts.run(host, command))
            assert "hello from a job" in "".join(outputs)  # the member's job ran on a node, its output came back
            with open(os.path.join(hosts.work("n2"), "hello.txt")) as f:
                assert f.read() == "hello from head\n"  # written on head, read on n2 through the grid
            for node in grid.nodes:
                assert node.unexpected_warnings() == [], node.name
        finally:
            hosts.stop()
