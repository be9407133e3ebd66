"""The grid file system: what both ends share (capability, layout, auth), the metadata and replica catalogue
(mrc), object storage (osd) and the client side: Python API, HTTP client and FUSE mount (client).

May import: the core, xos.wire, xos.kernel, xos.identity, xos.vo (feeds). Never xos.node or xos.aem."""
