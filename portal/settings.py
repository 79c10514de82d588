"""Settings for the allocation portal. Every deployment-specific value comes from the
environment (see the table in README.md); defaults give a working local portal on SQLite."""

from pathlib import Path

from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from portal.env import database_from_url, envbool, envint, envlist, envsecret

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEBUG = envbool("DEBUG", False)

SECRET_KEY = envsecret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (or set SECRET_KEY_FILE)"
        )
    SECRET_KEY = "insecure-development-key-only-for-DEBUG"  # noqa: S105 (never used with DEBUG off)

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
SITE_URL = (envsecret("SITE_URL") or "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "accounts",
    "allocations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        envsecret("DATABASE_URL") or "sqlite:///var/portal.sqlite3", base_dir=BASE_DIR
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "allocations:home"

LANGUAGE_CODE = "en-us"
# Usage times, rate windows and allocation dates are compared across clusters in
# different zones; the portal stores and computes in UTC only (a system check holds it).
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "allocations.staticfiles.PlotlyFinder",
]
STATIC_ROOT = BASE_DIR / "var" / "static"
# Uploaded files (usage imports). Never served by URL: they are read by the import
# worker, which must see the same directory as the web process.
MEDIA_ROOT = BASE_DIR / (envsecret("MEDIA_ROOT") or "var/media")  # a relative path: to the checkout

# E-mail: printed to the console unless an SMTP host is configured.
EMAIL_HOST = envsecret("EMAIL_HOST") or ""
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = envint("EMAIL_PORT", 587)
EMAIL_HOST_USER = envsecret("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = envsecret("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = envsecret("DEFAULT_FROM_EMAIL") or "SU portal <portal@localhost>"

# Celery: with no broker configured, tasks run inline in the calling process so the
# portal works on a laptop with nothing else running.
CELERY_BROKER_URL = envsecret("CELERY_BROKER_URL") or ""
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = envsecret("CELERY_RESULT_BACKEND") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_SOFT_TIME_LIMIT = envint("CELERY_TASK_SOFT_TIME_LIMIT", 300)
CELERY_TASK_TIME_LIMIT = envint("CELERY_TASK_TIME_LIMIT", 360)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"

REST_FRAMEWORK = {
    # Locked down by default: every endpoint names who may use it.
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api_errors.exception_handler",
    "COERCE_DECIMAL_TO_STRING": True,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "SU allocation portal API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

SESSION_COOKIE_SECURE = not DEBUG and envbool("SECURE_COOKIES", True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"allocations": {"level": envsecret("LOG_LEVEL") or "INFO"}},
}

# Holds (liens) reserve a job's estimate until its usage arrives; one left open longer
# than the job's wall time plus this grace (or the default, without a wall time) is
# released by the scheduled sweep.
HOLD_GRACE_HOURS = envint("HOLD_GRACE_HOURS", 24)
HOLD_DEFAULT_TTL_HOURS = envint("HOLD_DEFAULT_TTL_HOURS", 7 * 24)

# Background usage imports (allocations/imports.py). An upload larger than
# IMPORT_MAX_UPLOAD_BYTES, or whose text (gunzipped) passes IMPORT_MAX_TEXT_BYTES, is refused.
IMPORT_MAX_UPLOAD_BYTES = envint("IMPORT_MAX_UPLOAD_BYTES", 100 * 1024 * 1024)
IMPORT_MAX_TEXT_BYTES = envint("IMPORT_MAX_TEXT_BYTES", 2 * 1024 * 1024 * 1024)
IMPORT_BATCH_SIZE = envint("IMPORT_BATCH_SIZE", 1000)
# A queued or running import with no sign of life for this long is taken to have lost
# its worker, and may be resumed.
IMPORT_STALE_SECONDS = envint("IMPORT_STALE_SECONDS", 300)
# A run hands over to a fresh task after this long (the checkpoint keeps its place).
IMPORT_TASK_SOFT_TIME_LIMIT = envint("IMPORT_TASK_SOFT_TIME_LIMIT", 3600)
IMPORT_TASK_TIME_LIMIT = envint("IMPORT_TASK_TIME_LIMIT", 3900)
# Usage warnings: percentages of an allocation's budget (and of a member's cap) at which
# its PI (and the member) are e-mailed, once per crossing; an allocation may set its own.
# End-date warnings: days before an allocation's or a membership's end. A system check
# refuses values out of range.
ALERT_THRESHOLDS = envsecret("ALERT_THRESHOLDS") or "75,90,100"
ALERT_ENDING_DAYS = envsecret("ALERT_ENDING_DAYS") or "30,7"

# /metrics answers a Prometheus scraper carrying `Authorization: Bearer <METRICS_TOKEN>`,
# or a signed-in site admin; with no token set, only the latter.
METRICS_TOKEN = envsecret("METRICS_TOKEN") or ""

# Periodic work run by `celery -A portal beat`; every task is idempotent.
CELERY_BEAT_SCHEDULE = {
    "expire-stale-holds": {"task": "allocations.expire_holds", "schedule": 15 * 60},
    "resume-stale-imports": {"task": "allocations.resume_stale_imports", "schedule": 5 * 60},
    "close-ended": {"task": "allocations.close_ended", "schedule": crontab(minute=5, hour=0)},
    "send-alerts": {"task": "allocations.send_alerts", "schedule": 30 * 60},
    # Rollups follow every batch within seconds; this repairs any that a lost task missed.
    "refresh-rollups": {
        "task": "allocations.refresh_all_rollups",
        "schedule": crontab(minute=30, hour=1),
    },
}
