"""Chart data and forecasts as JSON: a plotly figure per chart, built from the rollups.

Visibility is the allocation API's: an allocation the caller cannot list is a 404 here
too. Cluster charts are for that cluster's admins. Every endpoint costs a fixed number
of queries whatever the number of usage records (tests/allocations/test_api_charts.py).
"""

import datetime as dt

from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from accounts.models import ApiToken
from allocations import charts, forecasts, selectors
from allocations.alerts import allocation_set_alert_thresholds, thresholds_for
from allocations.models import Allocation, Cluster, Project

MAX_RANGE_DAYS = 3 * 366


def _check_range(start: dt.date, end: dt.date) -> None:
    if end < start:
        raise serializers.ValidationError(
            {"end": [f"The end ({end}) is before the start ({start})."]}
        )
    if (end - start).days >= MAX_RANGE_DAYS:
        raise serializers.ValidationError(
            {"end": [f"Ask for at most {MAX_RANGE_DAYS} days at a time."]}
        )


class DateRangeSerializer(serializers.Serializer):
    start = serializers.DateField(required=False, help_text="First day (YYYY-MM-DD).")
    end = serializers.DateField(required=False, help_text="Last day, inclusive (YYYY-MM-DD).")

    def validate(self, attrs):
        if attrs.get("start") and attrs.get("end"):
            _check_range(attrs["start"], attrs["end"])
        return attrs


def _date_range(request, default_start: dt.date, default_end: dt.date) -> tuple[dt.date, dt.date]:
    """The range asked for in ?start=&end=, each defaulting to the object's own dates."""
    start, end = default_start, default_end
    # Without a query string there is nothing to parse: the serializer would only say so.
    if request.query_params:
        query = DateRangeSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        start = query.validated_data.get("start", default_start)
        end = query.validated_data.get("end", default_end)
    # Checked again with the defaults filled in: ?end= alone may fall before the start.
    _check_range(start, end)
    return start, end


class FigureSerializer(serializers.Serializer):
    figure = serializers.DictField(help_text="A plotly figure: {data, layout}.")
    start = serializers.DateField()
    end = serializers.DateField()


class ForecastSerializer(serializers.Serializer):
    today = serializers.DateField()
    window_days = serializers.IntegerField(help_text="Days the burn rate is averaged over.")
    burn_rate = serializers.DecimalField(max_digits=24, decimal_places=4, help_text="SUs/day")
    remaining = serializers.DecimalField(max_digits=21, decimal_places=4)
    exhaustion = serializers.DateField(allow_null=True)
    pattern = serializers.ChoiceField(
        choices=["idle", "growing", "declining", "bursty", "steady", "new"]
    )
    supplement_su = serializers.DecimalField(max_digits=24, decimal_places=0, allow_null=True)
    supplement_by = serializers.DateField(allow_null=True)
    unused_su = serializers.DecimalField(max_digits=24, decimal_places=0, allow_null=True)
    recommendation = serializers.CharField()


class AlertThresholdsSerializer(serializers.Serializer):
    alert_thresholds = serializers.CharField(
        allow_blank=True,
        allow_null=True,
        max_length=100,
        help_text='Percentages of the budget, e.g. "75,90,100"; empty for the site default.',
    )


class AlertThresholdsOutputSerializer(serializers.Serializer):
    alert_thresholds = serializers.ListField(child=serializers.IntegerField())
    site_default = serializers.BooleanField()


def _figure(figure: dict, start: dt.date, end: dt.date) -> Response:
    return Response({"figure": figure, "start": start, "end": end})


def _today() -> dt.date:
    return timezone.now().date()


_RANGE = {"parameters": [DateRangeSerializer], "responses": {200: FigureSerializer}}


class AllocationChartViewSet(viewsets.GenericViewSet):
    """Charts and the forecast of one allocation, for whoever may see it."""

    queryset = Allocation.objects.none()  # for the schema; get_queryset scopes every request
    serializer_class = FigureSerializer
    lookup_field = "code"
    lookup_value_converter = "uuid"

    def get_object(self) -> Allocation:
        """The allocation if the caller may see it (else 404), in one query, with
        viewer_manages and viewer_administers saying how much of it they see."""
        code = self.kwargs["code"]
        if isinstance(self.request.auth, ApiToken):
            # An importer token sees all of its cluster's allocations.
            allocation = (
                selectors.allocation_list_for_cluster(cluster=self.request.auth.cluster)
                .filter(code=code)
                .first()
            )
            if allocation is not None:
                allocation.viewer_manages = allocation.viewer_administers = True
        else:
            allocation = selectors.allocation_for_viewer(user=self.request.user, code=code)
        if allocation is None:
            raise Http404
        self.check_object_permissions(self.request, allocation)
        return allocation

    def _forecast(
        self, allocation: Allocation, points: list[tuple] | None = None
    ) -> forecasts.Forecast:
        """The forecast, from `points` when the caller already read the days it needs
        (from the allocation's start to today or its end), else from one query."""
        today = _today()
        if points is None:
            return selectors.allocation_forecast(allocation=allocation, today=today)
        return forecasts.forecast(
            points=points,
            start=allocation.start,
            end=allocation.end,
            budget=allocation.su_budget,
            remaining=allocation.su_remaining,
            today=today,
        )

    @extend_schema(**_RANGE)
    @action(detail=True, methods=["get"], url_path="charts/burndown")
    def burndown(self, request, code=None):
        """Remaining SUs against the ideal linear burn, with the projected exhaustion."""
        allocation = self.get_object()
        start, end = _date_range(request, allocation.start, allocation.end)
        # One read serves the figure (from the start to `end`) and the forecast (its
        # window ends today, or on the allocation's end if that came first).
        forecast_end = min(_today(), allocation.end)
        budget_steps, daily_used = selectors.burndown_series(
            allocation=allocation, start=allocation.start, end=max(end, forecast_end)
        )
        figure = charts.burndown_figure(
            title=f"{allocation.name}: SUs remaining",
            start=start,
            end=end,
            budget_steps=budget_steps,
            daily_used=[(day, su) for day, su in daily_used if day <= end],
            forecast=self._forecast(allocation, daily_used),
        )
        return _figure(figure, start, end)

    @extend_schema(**_RANGE)
    @action(detail=True, methods=["get"], url_path="charts/members")
    def members(self, request, code=None):
        """SUs used per member over time. A plain member sees their own usage and the
        rest as "Other members"; the PI, managers and cluster admins see everyone."""
        allocation = self.get_object()
        start, end = _date_range(request, allocation.start, allocation.end)
        sees_all = allocation.viewer_manages or allocation.viewer_administers
        bucket = charts.bucket_for(start, end)
        rows = selectors.usage_by_member_period(
            allocation=allocation,
            start=start,
            end=end,
            bucket=bucket,
            viewer=None if sees_all else request.user,
        )
        figure = charts.stacked_usage_figure(
            title=f"{allocation.name}: SUs by member",
            rows=rows,
            start=start,
            end=end,
            bucket=bucket,
        )
        return _figure(figure, start, end)

    @extend_schema(**_RANGE)
    @action(detail=True, methods=["get"], url_path="charts/resources")
    def resources(self, request, code=None):
        """SUs used per resource over time."""
        allocation = self.get_object()
        start, end = _date_range(request, allocation.start, allocation.end)
        bucket = charts.bucket_for(start, end)
        rows = selectors.usage_by_resource_period(
            allocation=allocation, start=start, end=end, bucket=bucket
        )
        figure = charts.stacked_usage_figure(
            title=f"{allocation.name}: SUs by resource",
            rows=rows,
            start=start,
            end=end,
            bucket=bucket,
        )
        return _figure(figure, start, end)

    @extend_schema(responses={200: ForecastSerializer})
    @action(detail=True, methods=["get"])
    def forecast(self, request, code=None):
        """Burn rate, projected exhaustion, usage pattern and a recommendation."""
        allocation = self.get_object()
        return Response(ForecastSerializer(self._forecast(allocation)).data)

    @extend_schema(
        request=AlertThresholdsSerializer,
        responses={
            200: AlertThresholdsOutputSerializer,
            400: OpenApiResponse(description="A threshold is not a whole number from 1 to 100."),
        },
    )
    @action(detail=True, methods=["get", "put"], url_path="alert-thresholds")
    def alert_thresholds(self, request, code=None):
        """The usage warning thresholds (percent of the budget); the PI, managers and
        cluster admins may change them."""
        allocation = self.get_object()
        if request.method == "PUT":
            if isinstance(request.auth, ApiToken):
                raise PermissionDenied("An importer token cannot change alerts.")
            data = AlertThresholdsSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            allocation = allocation_set_alert_thresholds(
                actor=request.user,
                allocation=allocation,
                thresholds=data.validated_data["alert_thresholds"],
            )
        body = {
            "alert_thresholds": list(thresholds_for(allocation)),
            "site_default": not allocation.alert_thresholds,
        }
        return Response(AlertThresholdsOutputSerializer(body).data)


class ProjectChartViewSet(viewsets.GenericViewSet):
    queryset = Project.objects.none()  # for the schema; get_queryset scopes every request
    serializer_class = FigureSerializer
    lookup_field = "code"
    lookup_value_converter = "uuid"

    def get_object(self) -> Project:
        if isinstance(self.request.auth, ApiToken):
            raise Http404  # an importer token sees no projects
        project = selectors.project_for_viewer(user=self.request.user, code=self.kwargs["code"])
        if project is None:
            raise Http404
        self.check_object_permissions(self.request, project)
        return project

    @extend_schema(responses={200: FigureSerializer})
    @action(detail=True, methods=["get"], url_path="charts/overview")
    def overview(self, request, code=None):
        """Each allocation of the project the caller may see: used, held, remaining."""
        project = self.get_object()
        allocations = (
            selectors.project_allocations_for(user=request.user, project=project)
            .order_by("cluster__name", "name")
            # Plain values: the figure needs five of them, not model instances.
            .values_list("pk", "name", "cluster__name", "su_budget", "su_used", "su_held")
        )
        rows = [
            (f"{name} ({cluster})", budget, used, held)
            for _, name, cluster, budget, used, held in allocations
        ]
        figure = charts.project_overview_figure(
            title=f"{project.title}: allocations", allocations=rows
        )
        today = _today()
        return _figure(figure, today, today)


class ClusterChartViewSet(viewsets.GenericViewSet):
    """Charts of a whole cluster, for its admins."""

    queryset = Cluster.objects.none()  # for the schema
    serializer_class = FigureSerializer
    lookup_field = "name"
    lookup_value_regex = "[-a-zA-Z0-9_]+"

    def get_object(self):
        if isinstance(self.request.auth, ApiToken):
            raise PermissionDenied("Cluster charts are for the cluster's admins.")
        cluster = get_object_or_404(Cluster, name=self.kwargs["name"])
        if not selectors.user_administers_cluster(user=self.request.user, cluster=cluster):
            raise PermissionDenied(f"Only admins of {cluster.name} see its charts.")
        return cluster

    def _months(self, request) -> tuple[dt.date, dt.date]:
        today = _today()
        default_start = (today.replace(day=1) - dt.timedelta(days=335)).replace(day=1)
        default_end = (today.replace(day=1) + dt.timedelta(days=62)).replace(day=1)
        return _date_range(request, default_start, default_end - dt.timedelta(days=1))

    @extend_schema(**_RANGE)
    @action(detail=True, methods=["get"], url_path="charts/commitment")
    def commitment(self, request, name=None):
        """SUs committed by allocations and SUs used, per month, against capacity."""
        cluster = self.get_object()
        start, end = self._months(request)
        months = charts.month_starts(start, end)
        committed = charts.prorate_by_month(
            selectors.cluster_commitments(cluster=cluster, start=start, end=end), months
        )
        used: dict = {}
        for _, month, su in selectors.cluster_usage_by_project_month(
            cluster=cluster, start=start, end=end
        ):
            used[month] = used.get(month, 0) + su
        figure = charts.commitment_figure(
            title=f"{cluster.name}: committed and used SUs per month",
            committed=committed,
            used=used,
            capacity=cluster.su_capacity_per_month,
        )
        return _figure(figure, start, end)

    @extend_schema(**_RANGE)
    @action(detail=True, methods=["get"], url_path="charts/usage")
    def usage(self, request, name=None):
        """SUs used per project per month."""
        cluster = self.get_object()
        start, end = self._months(request)
        rows = selectors.cluster_usage_by_project_month(cluster=cluster, start=start, end=end)
        figure = charts.stacked_usage_figure(
            title=f"{cluster.name}: SUs by project", rows=rows, start=start, end=end, bucket="month"
        )
        return _figure(figure, start, end)

    @extend_schema(**_RANGE)
    @action(detail=True, methods=["get"], url_path="charts/decisions")
    def decisions(self, request, name=None):
        """Days from a request to its decision, for requests decided in the range."""
        cluster = self.get_object()
        start, end = self._months(request)
        figure = charts.decision_time_figure(
            title=f"{cluster.name}: time from request to decision",
            decisions=selectors.decision_times(cluster=cluster, start=start, end=end),
        )
        return _figure(figure, start, end)
