"""The one API router: every viewset is registered here, so this file is the API's index."""

from rest_framework.routers import DefaultRouter

router = DefaultRouter()
