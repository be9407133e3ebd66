"""The `xos` command: one module per command group (main for the parser and the daemons, fs for the file
system). The top of the tree: it may import anything; nothing imports it."""
