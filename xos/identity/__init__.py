"""Who a grid user is on a node: VO credentials (credential), their mapping to local accounts (idmap), the
identity socket spoken by pam_xos and libnss_xos (proto, server), and installing those modules (install).

May import: the core and xos.kernel."""
