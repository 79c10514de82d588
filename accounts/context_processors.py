from django.conf import settings
from django.urls import reverse


def sign_in(request):
    """What a sign-in page needs to offer institutional sign-in (see
    templates/accounts/oidc_sign_in.html)."""
    if not settings.OIDC_ENABLED:
        return {"oidc_enabled": False}
    return {
        "oidc_enabled": True,
        "oidc_provider_name": settings.OIDC_PROVIDER_NAME,
        "oidc_sign_in_url": reverse("oidc_authentication_init"),
    }
