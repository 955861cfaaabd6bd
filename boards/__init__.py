"""cosparse.boards."""
