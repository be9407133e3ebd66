"""Virtual organizations (`xos serve vo`): members, roles, credentials and revocations (service, store), the
client every other daemon uses (client) and the following of its signed feeds (follow).

May import: the core, xos.wire, xos.identity."""
