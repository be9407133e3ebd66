"""The metadata and replica catalogue (`xos fs serve mrc`): volumes, the namespace and file metadata in SQLite
(catalogue), directory leases (leases), replica management (replicas), the HTTP service (service).

May import: the core, xos.wire, xos.identity, xos.vo, xos.fs's shared modules."""
