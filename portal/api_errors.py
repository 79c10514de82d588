"""One place that turns domain errors into HTTP answers.

Services raise django.core.exceptions.ValidationError (field-level when the field is
known); the API answers 400 with {"detail": ..., "errors": {field: [messages]}} so a
client can show each message beside its field.
"""

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def validation_error_body(exc: DjangoValidationError) -> dict:
    if hasattr(exc, "error_dict"):
        errors = {field: [str(m) for m in msgs] for field, msgs in exc.message_dict.items()}
    else:
        errors = {"non_field_errors": [str(m) for m in exc.messages]}
    first = next(iter(errors.values()))[0]
    body = {"detail": first, "errors": errors}
    code = getattr(exc, "code", None)
    if code:
        body["code"] = code
    return body


def exception_handler(exc, context):
    from allocations.services import BatchRejected

    if isinstance(exc, BatchRejected):
        # Every bad record with its index, so an importer can fix them all in one go.
        body = {
            "detail": f"{len(exc.errors)} records were rejected; nothing was written.",
            "errors": exc.errors,
        }
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DjangoValidationError):
        return Response(validation_error_body(exc), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.ValidationError):
        response.data = {"detail": "Invalid input.", "errors": response.data}
    return response
