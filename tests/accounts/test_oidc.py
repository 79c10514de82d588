"""Institutional sign-in against a fake OpenID Connect provider that signs real RS256
tokens: the whole code flow through the portal's URLs, with the provider's token,
userinfo and JWKS endpoints answered in-process."""

import json
import time
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.urls import reverse

from accounts.models import AuditEvent, Organization, User
from tests.conftest import make_user

IDP = "https://idp.example.org"
# Generating RSA keys is slow; two serve every test (the provider's and an impostor's).
PROVIDER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
IMPOSTOR_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CLIENT_ID = "su-portal"


class FakeResponse:
    def __init__(self, body, status=200, content_type="application/json"):
        self.status_code = status
        self._body = body
        self.headers = {"content-type": content_type}
        self.text = json.dumps(body)
        self.url = "fake"

    def json(self):
        return self._body

    def raise_for_status(self):
        if self.status_code >= 400:
            raise RuntimeError(self.status_code)


class FakeProvider:
    """Issues ID tokens for whoever `sign_in_as` names, as an identity provider would
    after the person authenticated there."""

    def __init__(self):
        self.key = PROVIDER_KEY
        self.signing_key = self.key
        self.claims = {}
        self.userinfo_overrides = {}
        self.audience = CLIENT_ID
        self.nonces = {}

    def sign_in_as(self, **claims):
        self.claims = claims

    def authorize(self, location: str) -> str:
        """Follows the portal's redirect to the provider; returns the callback query."""
        query = parse_qs(urlsplit(location).query)
        assert query["client_id"] == [CLIENT_ID]
        assert query["response_type"] == ["code"]
        code = f"code-{len(self.nonces)}"
        self.nonces[code] = query["nonce"][0]
        return f"?code={code}&state={query['state'][0]}"

    def _id_token(self, code: str) -> str:
        now = int(time.time())
        payload = {
            "iss": IDP,
            "aud": self.audience,
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonces[code],
            **self.claims,
        }
        return jwt.encode(payload, self.signing_key, algorithm="RS256", headers={"kid": "k1"})

    def post(self, url, data=None, **kwargs):
        assert url == f"{IDP}/token"
        assert data["client_secret"] == "s3cret"
        return FakeResponse({"id_token": self._id_token(data["code"]), "access_token": "at"})

    def get(self, url, headers=None, **kwargs):
        if url == f"{IDP}/jwks":
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            return FakeResponse({"keys": [{**jwk, "kid": "k1", "alg": "RS256"}]})
        assert url == f"{IDP}/userinfo"
        assert headers == {"Authorization": "Bearer at"}
        return FakeResponse({**self.claims, **self.userinfo_overrides})


@pytest.fixture
def provider(settings, monkeypatch):
    settings.OIDC_ENABLED = True
    settings.OIDC_PROVIDER_NAME = "CILogon"
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = "s3cret"
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{IDP}/authorize"
    settings.OIDC_OP_TOKEN_ENDPOINT = f"{IDP}/token"
    settings.OIDC_OP_USER_ENDPOINT = f"{IDP}/userinfo"
    settings.OIDC_OP_JWKS_ENDPOINT = f"{IDP}/jwks"
    settings.OIDC_OP_ISSUER = IDP
    settings.AUTHENTICATION_BACKENDS = [
        *settings.AUTHENTICATION_BACKENDS,
        "accounts.oidc.PortalOIDCBackend",
    ]
    fake = FakeProvider()
    monkeypatch.setattr("mozilla_django_oidc.auth.requests", fake)
    return fake


def sign_in(client, provider):
    start = client.get(reverse("oidc_authentication_init"))
    assert start.status_code == 302
    assert start["Location"].startswith(f"{IDP}/authorize?")
    return client.get(
        reverse("oidc_authentication_callback") + provider.authorize(start["Location"])
    )


def signed_in_user(client):
    response = client.get("/api/v1/allocations/")
    if response.status_code != 200:
        return None
    return User.objects.get(pk=client.session["_auth_user_id"])


CILOGON_CLAIMS = {
    "sub": "http://cilogon.org/serverA/users/1234",
    "email": "Ada@Uni.example.edu",
    "given_name": "Ada",
    "family_name": "Lovelace",
    "preferred_username": "ada",
    "idp": "urn:mace:incommon:uni.example.edu",
    "idp_name": "Example University",
}


class TestOidcSignIn:
    def test_it_creates_the_user_and_organization_from_the_claims(self, client, provider, db):
        provider.sign_in_as(**CILOGON_CLAIMS)

        response = sign_in(client, provider)

        assert response.status_code == 302
        user = signed_in_user(client)
        assert (user.username, user.email, user.get_full_name()) == (
            "ada",
            "Ada@uni.example.edu",
            "Ada Lovelace",
        )
        assert user.oidc_sub == CILOGON_CLAIMS["sub"]
        assert not user.has_usable_password()
        assert (user.organization.name, user.organization.originated_id) == (
            "Example University",
            "urn:mace:incommon:uni.example.edu",
        )
        event = AuditEvent.objects.get(action="SIGN_IN")
        assert (event.actor, event.details["backend"]) == (user, "accounts.oidc.PortalOIDCBackend")

    def test_a_returning_user_is_found_by_subject_and_refreshed(self, client, provider, db):
        provider.sign_in_as(**CILOGON_CLAIMS)
        sign_in(client, provider)
        client.logout()
        provider.sign_in_as(**{**CILOGON_CLAIMS, "email": "ada.l@uni.example.edu"})

        sign_in(client, provider)

        user = signed_in_user(client)
        assert (User.objects.count(), user.email) == (1, "ada.l@uni.example.edu")

    def test_it_links_an_account_made_beforehand_by_email(self, client, provider, org):
        existing = make_user("alovelace", org)
        provider.sign_in_as(**{**CILOGON_CLAIMS, "email": "ALOVELACE@example.edu"})

        sign_in(client, provider)

        assert signed_in_user(client) == existing
        existing.refresh_from_db()
        assert existing.oidc_sub == CILOGON_CLAIMS["sub"]
        assert existing.username == "alovelace"  # what the scheduler knows stays

    def test_it_does_not_link_by_an_unverified_email(self, client, provider, org):
        existing = make_user("alovelace", org)
        provider.sign_in_as(
            **{**CILOGON_CLAIMS, "email": "alovelace@example.edu", "email_verified": False}
        )

        sign_in(client, provider)

        # Nor may a second account take the address: the sign-in is refused.
        assert signed_in_user(client) is None
        assert list(User.objects.all()) == [existing]

    def test_an_existing_organization_is_reused_by_its_id(self, client, provider, db):
        known = Organization.objects.create(
            name="Example U.", originated_id="urn:mace:incommon:uni.example.edu"
        )
        provider.sign_in_as(**CILOGON_CLAIMS)

        sign_in(client, provider)

        assert signed_in_user(client).organization == known
        assert Organization.objects.count() == 1

    def test_a_taken_username_gets_a_suffix(self, client, provider, org):
        make_user("ada", org)
        provider.sign_in_as(**CILOGON_CLAIMS)

        sign_in(client, provider)

        assert signed_in_user(client).username == "ada-2"

    @pytest.mark.parametrize(
        "spoil",
        [
            pytest.param(lambda p: setattr(p, "audience", "another-client"), id="wrong-audience"),
            pytest.param(
                lambda p: setattr(p, "signing_key", IMPOSTOR_KEY),
                id="signed-by-another-key",
            ),
            pytest.param(
                lambda p: p.userinfo_overrides.update(sub="someone-else"), id="userinfo-subject"
            ),
            pytest.param(lambda p: p.claims.pop("email"), id="no-email"),
        ],
    )
    def test_it_refuses_a_bad_answer_and_creates_nothing(self, client, provider, db, spoil):
        provider.sign_in_as(**CILOGON_CLAIMS)
        spoil(provider)

        response = sign_in(client, provider)

        assert response.status_code == 302
        assert signed_in_user(client) is None
        assert not User.objects.exists()

    def test_the_login_page_offers_the_provider(self, client, provider, db):
        page = client.get(reverse("admin:login"))
        assert "Sign in with CILogon" in page.content.decode()
        assert reverse("oidc_authentication_init") in page.content.decode()


class TestOidcDisabled:
    def test_its_urls_answer_404_and_the_login_page_does_not_offer_it(self, client, db):
        assert client.get(reverse("oidc_authentication_init")).status_code == 404
        assert (
            client.get(reverse("oidc_authentication_callback") + "?code=x&state=y").status_code
            == 404
        )
        assert "Sign in with" not in client.get(reverse("admin:login")).content.decode()
