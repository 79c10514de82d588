from django.utils.functional import cached_property
from rest_framework import authentication, exceptions

from accounts.models import ApiToken
from accounts.tokens import api_token_check


class ClusterImporter:
    """Who a request is from when it carries an importer token: a cluster, not a person.

    It is authenticated but has no staff rights and is admin of nothing; views that
    accept tokens check `request.auth.cluster` against the cluster named in the body.
    """

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False
    is_active = True
    pk = None
    id = None

    def __init__(self, token: ApiToken):
        self.token = token

    @cached_property
    def username(self) -> str:
        return f"importer:{self.token.cluster.name}:{self.token.prefix}"

    def __str__(self) -> str:
        return self.username


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer sup_…`. Tokens never travel in URLs."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Give the token as 'Authorization: Bearer <token>'."
            )
        try:
            secret = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("The token has invalid characters.") from None
        token = api_token_check(secret)
        if token is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked token.")
        return ClusterImporter(token), token

    def authenticate_header(self, request):
        return self.keyword
