"""Telling running workers that a checkpoint was published (the Redis channel)."""

import json
from pathlib import Path

CHECKPOINT_CHANNEL = "vidserve:checkpoints"


def announce_checkpoint(redis_url: str, family: str, name: str, version: str, path: Path) -> int:
    """Publish {family, name, version, path} on the channel; returns how many listeners got it."""
    import redis

    message = json.dumps(
        {"family": family, "name": name, "version": version, "path": str(Path(path).resolve())}
    )
    with redis.Redis.from_url(redis_url) as client:
        return int(client.publish(CHECKPOINT_CHANNEL, message))
