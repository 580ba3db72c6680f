"""Flower's settings; `celery -A worker flower` reads this file from the working directory.

Flower never serves without credentials: FLOWER_BASIC_AUTH ("user:password") is required, except
in explicit dev mode (CHATQ_DEV=1), where `make run` also opens its API (FLOWER_UNAUTHENTICATED_API).
"""

from models import ConfigError, Settings

_settings = Settings.from_env()

if _settings.flower_basic_auth:
    if ":" not in _settings.flower_basic_auth:
        raise ConfigError("FLOWER_BASIC_AUTH must be user:password")
    basic_auth = [_settings.flower_basic_auth]
elif not _settings.dev_mode:
    raise ConfigError("Flower refuses to serve without FLOWER_BASIC_AUTH=user:password (or CHATQ_DEV=1)")
