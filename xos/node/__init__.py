"""The node daemon (`xos serve node`): workspaces and their network, allocations and accounting (service,
workspace, network, store), logins and identity following (logins), grid mounts in workspaces (gridmount),
checkpoints and migration (checkpoints), its local and peer HTTP API (api) and its client (client).

May import: the core, xos.wire, xos.kernel, xos.identity, xos.vo (client side), xos.checkpoint."""
