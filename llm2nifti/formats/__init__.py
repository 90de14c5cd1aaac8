"""One module per on-disk format: names, writing, reading and validation."""
