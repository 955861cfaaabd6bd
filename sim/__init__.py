"""cosparse.sim."""
