"""The `xos` command: one module per command group (ws, job, fs, vo, node, host, serve), the shared options
in common (daemon addresses with their environment variables, --cred, --json), the parser in main.

The top of the tree: it may import anything, and imports the heavy parts only inside the commands that
need them, so that `xos --help` stays quick. Nothing imports it."""
