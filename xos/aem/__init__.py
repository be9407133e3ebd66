"""The job manager (`xos serve aem`): job descriptions (jobspec), the job store and its state machine (jobs),
ClassAd matchmaking (classad), the service with its loops and HTTP API (service) and its client (client).

May import: the core, xos.wire, xos.identity, xos.vo, xos.checkpoint (transfer), xos.fs (client).
Never xos.node: it speaks to nodes over their peer API only."""
