"""Checkpoints as a library: driving CRIU (criu), images and their manifests (image), credentials carried in
an image (creds), images streamed between hosts (transfer).

May import: the core, xos.wire, xos.kernel. Never xos.node: the node uses it, not the other way round."""
