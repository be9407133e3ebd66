"""xos native parts: the spawn path, syscalls, cgroup counters."""
