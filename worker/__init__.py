"""chatq's worker: `celery -A worker worker` answers messages, `celery -A worker beat` sweeps."""

from models import Settings

from .celery_app import create_celery

app = create_celery(Settings.from_env())

__all__ = ["app"]
