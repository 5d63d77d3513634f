"""Settings, read from environment variables prefixed VIDSERVE_ (e.g. VIDSERVE_LOG_LEVEL=debug)."""

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIDSERVE_", extra="ignore")

    log_level: str = "info"


@lru_cache
def get_settings() -> Settings:
    return Settings()
