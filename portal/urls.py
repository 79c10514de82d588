from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from portal.api import router
from portal.metrics import metrics
from portal.ping import api_ping, page_ping

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("oidc/", include("accounts.urls")),
    path("api/v1/ping/", api_ping, name="api-ping"),
    path("api/v1/", include(router.urls)),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # Where Prometheus looks by default: no trailing slash.
    path("metrics", metrics, name="metrics"),
    path("ping/", page_ping, name="ping"),
    path("", include("allocations.urls")),
]
