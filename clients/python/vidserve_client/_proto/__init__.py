"""Generated from proto/vidserve.proto by clients/python/generate.py; do not edit."""
