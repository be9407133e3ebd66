"""Object storage (`xos fs serve osd`): file objects on local disk, served by ranges with capabilities checked
on every request; the native reader (xos._native._osd) answers reads.

May import: the core, xos.wire, xos.identity, xos.vo, xos.fs's shared modules."""
