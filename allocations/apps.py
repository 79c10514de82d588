from django.apps import AppConfig
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


class AllocationsConfig(AppConfig):
    name = "allocations"
    verbose_name = "Allocations"


@register(Tags.compatibility)
def check_settings(app_configs, **kwargs):
    problems = []
    if settings.TIME_ZONE != "UTC":
        problems.append(
            Error(
                "TIME_ZONE must be 'UTC': usage times and rate windows are compared in UTC.",
                id="portal.E001",
            )
        )
    if not settings.USE_TZ:
        problems.append(Error("USE_TZ must be True.", id="portal.E002"))
    broker = settings.CELERY_BROKER_URL
    if broker and not broker.startswith(
        ("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://")
    ):
        problems.append(
            Error(
                f"CELERY_BROKER_URL {broker!r} is neither a Redis nor a RabbitMQ URL.",
                hint="Use redis://host:6379/0 or amqp://user:password@host:5672//",
                id="portal.E003",
            )
        )
    if not settings.DEBUG and not broker:
        problems.append(
            Warning(
                "CELERY_BROKER_URL is not set: background tasks run inline in web requests.",
                hint="Set CELERY_BROKER_URL and run a worker and beat in production.",
                id="portal.W001",
            )
        )
    problems += _check_alert_settings()
    return problems


def _check_alert_settings() -> list:
    from django.core.exceptions import ValidationError

    from allocations.alerts import ending_days, site_thresholds

    problems = []
    for read, name in ((site_thresholds, "ALERT_THRESHOLDS"), (ending_days, "ALERT_ENDING_DAYS")):
        try:
            read()
        except ValidationError as exc:
            problems.append(
                Error(f"{name}: {exc.messages[0]}", hint="e.g. 75,90,100", id="portal.E004")
            )
    return problems
