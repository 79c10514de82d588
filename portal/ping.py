"""The smallest authenticated answers the portal gives: the references the benchmarks
measure every other page and endpoint against (bench/run). Each does what every request
pays for (middleware, authentication, one session or token lookup) and nothing else."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response


@extend_schema(
    responses=inline_serializer("Ping", {"ok": serializers.BooleanField()}),
    description="Answers any authenticated caller (a signed-in user or an importer token).",
)
@api_view(["GET"])
def api_ping(request: Request) -> Response:
    return Response({"ok": True})


@login_required
def page_ping(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/ping.html")
