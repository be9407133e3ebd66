"""The Linux kernel as xos uses it: spawning into namespaces and cgroups (spawn), paths opened beneath a
directory without following links (safepath), netlink (netlink), cgroups (cgroup), keyrings, the heap.

May import: the core (xos.errors, xos.units, xos.allocation) and xos._native. Knows nothing of nodes."""
