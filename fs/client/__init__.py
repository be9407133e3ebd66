"""The client side of the grid file system: the Python API (client), the keep-alive HTTP client of the data
path (http) and the FUSE mount (mount, over xos._native._fuse).

May import: the core, xos.fs's shared modules, xos._native. Never the MRC or OSD."""
