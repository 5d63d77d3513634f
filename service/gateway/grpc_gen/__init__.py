"""Generated from proto/vidserve.proto by proto/generate.py; do not edit."""
