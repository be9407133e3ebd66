"""Checkpoint, restart and migration of workspaces: see issue 4."""
