"""`make demo`: two workspaces of two VOs on one node; one floods CPU and network, the other is unharmed."""

from __future__ import annotations

import sys

from xos.testing import node
from xos.testing.experiments import isolation, isolation_table


def main() -> int:
    """Build a node in its own network namespace, run the isolation experiment, print the table."""
    print("xos demo: a node with two VO workspaces (vo-a floods, vo-b runs its job stream)\n", flush=True)
    with node() as n, n.client() as c:
        info = c.info()
        print(f"node {info['name']}: cgroup {info['cgroup']}, {info['capacity']['cpu']:g} CPUs, "
              f"workspace subnet {info['subnet']}\n", flush=True)
        result = c.run(isolation(c.client))
    print(isolation_table(result))
    ok = result["cpu_ratio"] >= 0.9 and result["net_ratio"] >= 0.9
    print("\nisolation held" if ok else "\nisolation did NOT hold on this run")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
