"""vidserve client (being written)."""
