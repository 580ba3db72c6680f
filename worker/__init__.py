"""chatq's worker: `celery -A worker worker` answers messages, `celery -A worker beat` sweeps."""

from models.process.metrics_support import prepare_multiprocess_dir

# Celery imports the tasks — and so prometheus-client — before any of its start-up signals, and
# prometheus-client picks its multiprocess mode when first imported: the directory where the pool's
# processes add up their counters must exist before that, so it is made here, once per process group.
prepare_multiprocess_dir("worker")

from models import Settings  # noqa: E402

from .celery_app import create_celery  # noqa: E402

app = create_celery(Settings.from_env())

__all__ = ["app"]
