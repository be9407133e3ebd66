"""The one HTTP layer: JSON bodies and errors on the wire (client), the lean server for hot paths (lean),
host identities and TLS contexts (hostid).

May import: the core (xos.errors, xos.log, xos.paths). Knows nothing of what runs on top of it."""
