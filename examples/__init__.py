"""Bundled examples: the trained digits network (see README.md here)."""
