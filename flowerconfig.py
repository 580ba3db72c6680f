"""Flower's settings; `celery -A worker flower` reads this file from the working directory.

Flower never serves without credentials: FLOWER_BASIC_AUTH ("user:password") is required outside
dev mode (CHATQ_DEV=1). With credentials set, Flower sends no CORS headers and refuses cross-site
requests, so no page of another origin can drive it; in dev mode it also listens on loopback only
(`make run` makes up a password for each run and prints it).
"""

from models import Settings

_settings = Settings.from_env()
_credentials = _settings.require_flower_auth()

if _credentials:
    basic_auth = [_credentials]
if _settings.dev_mode:
    address = "127.0.0.1"
