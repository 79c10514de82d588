"""How the OpenAPI schema describes importer tokens (drf-spectacular finds this
extension once the module is imported: see AccountsConfig.ready)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiTokenAuthentication"
    name = "importerToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A cluster's importer token (sup_…), issued by a cluster admin.",
        }
