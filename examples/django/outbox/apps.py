"""The Django app: add "outbox" to INSTALLED_APPS, then `manage.py migrate`
creates the table (migrations/0001_initial.py)."""

from django.apps import AppConfig


class OutboxConfig(AppConfig):
    # The package's own path, so the app works wherever it is copied to.
    name = __name__.rpartition(".")[0]
    label = "outbox"
    verbose_name = "warren outbox"
    default_auto_field = "django.db.models.BigAutoField"
