"""cosparse.compiler."""
