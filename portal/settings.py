"""Settings for the allocation portal. Every deployment-specific value comes from the
environment (see the table in README.md); defaults give a working local portal on SQLite."""

import datetime as dt
from pathlib import Path

import jinja2
from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF
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
    "axes",
    "csp",
    "accounts",
    "allocations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "portal.middleware.RequestSizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After authentication: audit records made anywhere in a request name its user and IP.
    "accounts.middleware.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a lockout raised by its backend into the page.
    "axes.middleware.AxesMiddleware",
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
                "accounts.context_processors.sign_in",
            ],
        },
    },
    # The rows of the busiest tables only (portal/fragments.py says why); every page is
    # a Django template.
    {
        "BACKEND": "django.template.backends.jinja2.Jinja2",
        "NAME": "fragments",
        "DIRS": [BASE_DIR / "templates" / "fragments"],
        "APP_DIRS": False,
        "OPTIONS": {"undefined": jinja2.StrictUndefined, "autoescape": True},
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

# django-axes first: it refuses a locked-out username and address before any password
# (or identity provider) is consulted.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# Which request header holds the client's address. Behind a reverse proxy set it to the
# header the proxy writes (e.g. HTTP_X_REAL_IP); trusting a client-set header otherwise
# would let anyone pick the address lockouts and the audit log see.
CLIENT_IP_HEADER = envsecret("CLIENT_IP_HEADER") or "REMOTE_ADDR"

# Login throttling (django-axes): after AXES_FAILURE_LIMIT failed sign-ins for one
# username from one address, both are refused for AXES_COOLOFF_MINUTES.
AXES_FAILURE_LIMIT = envint("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = dt.timedelta(minutes=envint("AXES_COOLOFF_MINUTES", 30))
# Username and address together: a campus behind one NAT address is not locked out by
# one person's typos, and one username cannot be guessed at from many places unnoticed
# (each failure is in the audit log).
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.views.locked_out"
# The same address the audit log records.
AXES_CLIENT_IP_CALLABLE = "accounts.audit_context.client_ip"
AXES_VERBOSE = False

# Sign-in through an institution (OpenID Connect: CILogon, Keycloak, ...). Off unless
# OIDC_ENABLED is set; local accounts keep working either way. See README "Security".
OIDC_ENABLED = envbool("OIDC_ENABLED", False)
OIDC_PROVIDER_NAME = envsecret("OIDC_PROVIDER_NAME") or "your institution"
OIDC_RP_CLIENT_ID = envsecret("OIDC_RP_CLIENT_ID") or ""
OIDC_RP_CLIENT_SECRET = envsecret("OIDC_RP_CLIENT_SECRET") or ""
OIDC_OP_AUTHORIZATION_ENDPOINT = envsecret("OIDC_OP_AUTHORIZATION_ENDPOINT") or ""
OIDC_OP_TOKEN_ENDPOINT = envsecret("OIDC_OP_TOKEN_ENDPOINT") or ""
OIDC_OP_USER_ENDPOINT = envsecret("OIDC_OP_USER_ENDPOINT") or ""
OIDC_OP_JWKS_ENDPOINT = envsecret("OIDC_OP_JWKS_ENDPOINT") or ""
# When set, the ID token must name this issuer (e.g. https://cilogon.org).
OIDC_OP_ISSUER = envsecret("OIDC_OP_ISSUER") or ""
OIDC_RP_SIGN_ALGO = envsecret("OIDC_RP_SIGN_ALGO") or "RS256"
OIDC_RP_SCOPES = envsecret("OIDC_RP_SCOPES") or "openid email profile"
OIDC_USERNAME_CLAIM = envsecret("OIDC_USERNAME_CLAIM") or "preferred_username"
# CILogon names the home institution in idp_name (and its entity id in idp); a Keycloak
# realm sends whatever claim its mapper is set up to write.
OIDC_ORGANIZATION_CLAIM = envsecret("OIDC_ORGANIZATION_CLAIM") or "idp_name"
OIDC_ORGANIZATION_ID_CLAIM = envsecret("OIDC_ORGANIZATION_ID_CLAIM") or "idp"
OIDC_CREATE_USER = envbool("OIDC_CREATE_USER", True)
# A first sign-in may claim an account an admin created beforehand with the same
# e-mail address, unless the provider says that address is unverified.
OIDC_LINK_BY_EMAIL = envbool("OIDC_LINK_BY_EMAIL", True)
OIDC_AUTHENTICATION_CALLBACK_URL = "oidc_authentication_callback"
if OIDC_ENABLED:
    missing = [
        name
        for name in (
            "OIDC_RP_CLIENT_ID",
            "OIDC_RP_CLIENT_SECRET",
            "OIDC_OP_AUTHORIZATION_ENDPOINT",
            "OIDC_OP_TOKEN_ENDPOINT",
            "OIDC_OP_USER_ENDPOINT",
            "OIDC_OP_JWKS_ENDPOINT",
        )
        if not globals()[name]
    ]
    if missing:
        raise ImproperlyConfigured(f"OIDC_ENABLED needs {', '.join(missing)}")
    AUTHENTICATION_BACKENDS.append("accounts.oidc.PortalOIDCBackend")

LANGUAGE_CODE = "en-us"
# Usage times, rate windows and allocation dates are compared across clusters in
# different zones; the portal stores and computes in UTC only (a system check holds it).
TIME_ZONE = "UTC"
# The portal ships in English only and switches no language per request (no
# LocaleMiddleware), so translation machinery would only cost time: every gettext and
# lazy string looks the active language up in a context-local first, which measured
# 0.3 ms on a review queue page. Set it back when translations are added.
USE_I18N = False
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
    # Per importer token and per signed-in user; a refusal is 429 with Retry-After.
    "DEFAULT_THROTTLE_CLASSES": [
        "portal.throttles.ImporterTokenThrottle",
        "portal.throttles.SignedInUserThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "importer": envsecret("THROTTLE_IMPORTER") or "600/minute",
        "user": envsecret("THROTTLE_USER") or "300/minute",
    },
    "COERCE_DECIMAL_TO_STRING": True,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "SU allocation portal API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema shows no data, but it is the map of the API: signed-in callers only.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
}

# Throttle counts live in the cache: with several server processes, point CACHE_URL at
# Redis so they share one count.
CACHE_URL = envsecret("CACHE_URL") or ""
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
        if CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# A usage batch of 10,000 records is about 3 MB of JSON; twice that leaves room for long
# names. Larger bodies are refused with 413 before they are parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("DATA_UPLOAD_MAX_MEMORY_SIZE", 8 * 1024 * 1024)

# HTTPS: secure cookies, HSTS and the redirect to https:// whenever DEBUG is off. Behind
# a proxy that ends TLS, set SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO,https (and
# make sure the proxy overwrites that header).
SESSION_COOKIE_SECURE = not DEBUG and envbool("SECURE_COOKIES", True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", not DEBUG)
_proxy_header = envlist("SECURE_PROXY_SSL_HEADER", [])
if _proxy_header:
    if len(_proxy_header) != 2:
        raise ImproperlyConfigured(
            "SECURE_PROXY_SSL_HEADER must be 'HEADER,value', e.g. HTTP_X_FORWARDED_PROTO,https"
        )
    SECURE_PROXY_SSL_HEADER = tuple(_proxy_header)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy: scripts and styles from this site only, never inline. A page
# that truly needs an inline script writes <script nonce="{{ request.csp_nonce }}">;
# the nonce enters the header only on pages that use it.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        # plotly.js adds two <style> elements of fixed content (one empty, filled through the
        # CSSOM): their hashes admit exactly those, not inline styles in general. A plotly
        # upgrade that changes them fails tests/browser/test_charts_in_pages.py.
        "style-src": [
            SELF,
            NONCE,
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",
            "'sha256-ji27qzEtxXZW+7dun6UwjHXJ18e6WAin1VvNtkzIE/o='",
        ],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

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
# The uploaded file of an import that finished (done) this many days ago is deleted; the
# import's record, counters and rejects stay. 0 keeps every file.
IMPORT_FILE_RETENTION_DAYS = envint("IMPORT_FILE_RETENTION_DAYS", 30)
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
    "purge-import-files": {
        "task": "allocations.purge_import_files",
        "schedule": crontab(minute=45, hour=2),
    },
    "close-ended": {"task": "allocations.close_ended", "schedule": crontab(minute=5, hour=0)},
    "send-alerts": {"task": "allocations.send_alerts", "schedule": 30 * 60},
    # Rollups follow every batch within seconds; this repairs any that a lost task missed.
    "refresh-rollups": {
        "task": "allocations.refresh_all_rollups",
        "schedule": crontab(minute=30, hour=1),
    },
}
