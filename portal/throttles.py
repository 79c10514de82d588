"""API rate limits: one count per importer token and one per signed-in user. Each class
answers only for its own kind of caller, so a request is counted once. Every endpoint
needs a caller, and DRF refuses an unauthenticated one before it throttles; sign-in
attempts are limited by django-axes."""

from rest_framework.throttling import SimpleRateThrottle

from accounts.models import ApiToken


class ImporterTokenThrottle(SimpleRateThrottle):
    scope = "importer"

    def get_cache_key(self, request, view):
        if not isinstance(request.auth, ApiToken):
            return None
        # The token's row, not its secret: the secret never reaches the cache.
        return self.cache_format % {"scope": self.scope, "ident": request.auth.pk}


class SignedInUserThrottle(SimpleRateThrottle):
    scope = "user"

    def get_cache_key(self, request, view):
        if isinstance(request.auth, ApiToken) or not request.user.is_authenticated:
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}
