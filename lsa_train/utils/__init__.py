"""Small helpers shared across the package (file I/O, validation)."""
