from accounts.audit_context import bind_request


class AuditContextMiddleware:
    """Makes the current request known to audit_record, so a service called from a
    view, the admin or the API records who acted and from where without being passed
    the request."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with bind_request(request):
            return self.get_response(request)
