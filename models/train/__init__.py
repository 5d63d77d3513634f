"""Training jobs: one module a family, sharing the loop (loop.py) and the announcement."""
