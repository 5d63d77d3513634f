"""Queues between gateways and workers: one interface, in-process and Redis Streams."""
