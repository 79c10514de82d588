"""Sign-in through an OpenID Connect provider (CILogon, Keycloak, ...).

mozilla-django-oidc runs the code flow; this backend decides which account a
provider's claims belong to (accounts.services.oidc_user_sync) and checks what the
library leaves out: the ID token's audience and issuer, and that the userinfo answer
is about the same subject as the ID token."""

import logging

import jwt
import requests
from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.utils.encoding import smart_bytes
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from accounts.models import User
from accounts.services import oidc_user_sync

logger = logging.getLogger(__name__)


class PortalOIDCBackend(OIDCAuthenticationBackend):
    def authenticate(self, request, **kwargs):
        # A bad token or an unreachable provider is a failed sign-in (recorded in the
        # audit log as one), not a server error.
        try:
            return super().authenticate(request, **kwargs)
        except (SuspiciousOperation, requests.RequestException) as exc:
            logger.warning("Institutional sign-in refused: %s", exc)
            return None

    def _verify_jws(self, payload, key):
        header = jwt.get_unverified_header(payload)
        if header.get("alg") != self.OIDC_RP_SIGN_ALGO:
            raise SuspiciousOperation("The token is not signed with the configured algorithm.")
        try:
            return jwt.decode(
                smart_bytes(payload),
                key,
                algorithms=[self.OIDC_RP_SIGN_ALGO],
                audience=self.OIDC_RP_CLIENT_ID,
                issuer=getattr(settings, "OIDC_OP_ISSUER", "") or None,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            raise SuspiciousOperation(f"The ID token was refused: {exc}") from exc

    def get_userinfo(self, access_token, id_token, payload):
        claims = super().get_userinfo(access_token, id_token, payload)
        # OIDC Core 5.3.2: a userinfo answer about another subject must not be used.
        if str(claims.get("sub", "")) != str(payload.get("sub", "")):
            raise SuspiciousOperation("The userinfo subject differs from the ID token's.")
        # Some providers put the organisation only in the ID token.
        return {**payload, **claims}

    def describe_user_by_claims(self, claims):
        return f"subject {claims.get('sub')!r}"

    def verify_claims(self, claims):
        return bool(claims.get("sub")) and bool(claims.get("email"))

    def filter_users_by_claims(self, claims):
        users = User.objects.filter(oidc_sub=claims["sub"])
        if users.exists() or not settings.OIDC_LINK_BY_EMAIL:
            return users
        if claims.get("email_verified") is False:
            return users
        # An account an admin made beforehand, not yet linked to any subject.
        return User.objects.filter(oidc_sub="", email__iexact=claims["email"])

    def create_user(self, claims):
        return oidc_user_sync(claims=claims)

    def update_user(self, user, claims):
        return oidc_user_sync(claims=claims, user=user)
