"""The ledger's API: allocations and balances, admission checks, holds, refunds, usage,
background imports, and the scheduler sync (the limits Slurm should enforce, and reports of
what was applied)."""

from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, renderers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, PermissionDenied
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from accounts.models import ApiToken
from allocations import admission as admission_service
from allocations.adjustments import usage_refund
from allocations.admission import UNKNOWN, Admission, AdmissionRefused
from allocations.imports import ImportNotResumable, usage_import_create, usage_import_resume
from allocations.ingest import usage_ingest
from allocations.models import Allocation, Cluster, Hold, Membership, UsageImport
from allocations.selectors import (
    allocation_list_for,
    allocation_list_for_cluster,
    desired_state_for,
    sync_report_list_for_cluster,
    usage_import_list_for,
    usage_import_rejects_csv,
    user_administers_cluster,
    user_manages_project,
)
from allocations.serializers import (
    AdjustmentOutputSerializer,
    AdmissionOutputSerializer,
    AllocationOutputSerializer,
    BalanceSerializer,
    DesiredStateSerializer,
    EstimateSerializer,
    HoldInputSerializer,
    HoldOutputSerializer,
    MemberBalanceSerializer,
    RefundInputSerializer,
    SyncReportInputSerializer,
    SyncReportOutputSerializer,
    UsageBatchInputSerializer,
    UsageBatchOutputSerializer,
    UsageImportInputSerializer,
    UsageImportOutputSerializer,
)
from allocations.services import sync_report_create


def cluster_for(request, name: str) -> Cluster:
    """The cluster named in a scheduler-facing request, if the caller may act for it:
    an importer token of that cluster, or one of its admins."""
    token = request.auth if isinstance(request.auth, ApiToken) else None
    if token is not None:
        if token.cluster.name != name:
            raise PermissionDenied("This token belongs to another cluster.")
        return token.cluster
    cluster = Cluster.objects.filter(name=name).first()
    if cluster is None:
        raise NotFound({"detail": f"No cluster named {name!r}.", "reason": "unknown_cluster"})
    if not user_administers_cluster(user=request.user, cluster=cluster):
        raise PermissionDenied("Only this cluster's importer token or its admins may do this.")
    return cluster


def _actor(request):
    return None if isinstance(request.auth, ApiToken) else request.user


def _refusal_response(result: Admission) -> Response:
    code = status.HTTP_404_NOT_FOUND if result.reason in UNKNOWN else status.HTTP_409_CONFLICT
    return Response(AdmissionOutputSerializer(result).data, status=code)


class AdmissionViewSet(viewsets.ViewSet):
    """May a user charge an allocation for about this much on a resource now?"""

    @extend_schema(
        request=EstimateSerializer,
        responses={
            200: AdmissionOutputSerializer,
            404: OpenApiResponse(AdmissionOutputSerializer, description="A name is unknown."),
            409: OpenApiResponse(AdmissionOutputSerializer, description="Refused; see reason."),
        },
    )
    def create(self, request):
        data = EstimateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        cluster = cluster_for(request, v["cluster"])
        result = admission_service.admission_check(
            cluster=cluster,
            username=v["user"],
            account=v["allocation"],
            resource=v["resource"],
            estimate_su=v.get("estimate_su"),
            count=v.get("count"),
            wall_seconds=v.get("wall_seconds"),
        )
        if not result.allowed:
            return _refusal_response(result)
        return Response(AdmissionOutputSerializer(result).data)


class HoldViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Holds (liens): SUs reserved for a job until its usage arrives or it is released."""

    serializer_class = HoldOutputSerializer
    queryset = Hold.objects.none()  # for the schema; get_queryset scopes every request
    lookup_field = "code"
    lookup_value_converter = "uuid"

    def get_queryset(self):
        qs = Hold.objects.select_related("cluster", "allocation", "user", "resource")
        if isinstance(self.request.auth, ApiToken):
            return qs.filter(cluster=self.request.auth.cluster)
        if self.request.user.is_superuser:
            return qs
        return qs.filter(cluster__admins=self.request.user)

    @extend_schema(
        request=HoldInputSerializer,
        responses={
            201: HoldOutputSerializer,
            404: AdmissionOutputSerializer,
            409: AdmissionOutputSerializer,
        },
    )
    def create(self, request):
        data = HoldInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        cluster = cluster_for(request, v["cluster"])
        try:
            hold, _ = admission_service.hold_create(
                cluster=cluster,
                actor=_actor(request),
                username=v["user"],
                account=v["allocation"],
                resource=v["resource"],
                job_id=v["job_id"],
                estimate_su=v.get("estimate_su"),
                count=v.get("count"),
                wall_seconds=v.get("wall_seconds"),
            )
        except AdmissionRefused as refused:
            return _refusal_response(refused.admission)
        return Response(HoldOutputSerializer(hold).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: HoldOutputSerializer})
    def destroy(self, request, code=None):
        """Releases the hold early (the job was cancelled or never started)."""
        hold = self.get_object()
        hold = admission_service.hold_release(hold=hold)
        return Response(HoldOutputSerializer(hold).data)


class RefundViewSet(viewsets.ViewSet):
    @extend_schema(
        request=RefundInputSerializer, responses={201: AdjustmentOutputSerializer(many=True)}
    )
    def create(self, request):
        """Refunds a job in full (node failure, preemption); a job is refunded once."""
        # Before the body is read: an importer may not refund, whatever it sends.
        if isinstance(request.auth, ApiToken):
            raise PermissionDenied("Refunds are decided by a cluster admin, not an importer.")
        data = RefundInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        cluster = cluster_for(request, v["cluster"])
        adjustments = usage_refund(
            actor=request.user,
            cluster=cluster,
            job_id=v["job_id"],
            username=v.get("user") or None,
            reason=v["reason"],
        )
        return Response(
            AdjustmentOutputSerializer(adjustments, many=True).data, status=status.HTTP_201_CREATED
        )


class AllocationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Allocations the caller may see, with their balances."""

    serializer_class = AllocationOutputSerializer
    queryset = Allocation.objects.none()  # for the schema; get_queryset scopes every request
    lookup_field = "code"
    lookup_value_converter = "uuid"

    def get_queryset(self):
        if isinstance(self.request.auth, ApiToken):
            return allocation_list_for_cluster(cluster=self.request.auth.cluster)
        return allocation_list_for(user=self.request.user)

    @extend_schema(responses={200: BalanceSerializer})
    @action(detail=True, methods=["get"])
    def balance(self, request, code=None):
        """The allocation's balance, and the caller's own as a member (or, for the PI,
        managers and cluster admins, any member's with ?user=)."""
        allocation = self.get_object()
        body = BalanceSerializer(allocation).data
        username = request.query_params.get("user")
        if username is None and request.user.pk is not None:
            membership = (
                Membership.objects.select_related("user")
                .filter(allocation=allocation, user=request.user)
                .first()
            )
        elif username is not None:
            may = (
                isinstance(request.auth, ApiToken)
                or user_manages_project(user=request.user, project=allocation.project)
                or user_administers_cluster(user=request.user, cluster=allocation.cluster)
            )
            if not may and username != request.user.username:
                raise PermissionDenied(
                    "Only the project's PI, managers and admins see other members."
                )
            membership = get_object_or_404(
                Membership.objects.select_related("user"),
                allocation=allocation,
                user__username=username,
            )
        else:
            membership = None
        if membership is not None:
            membership.remaining = admission_service.member_remaining(allocation, membership)
            body["member"] = MemberBalanceSerializer(membership).data
        return Response(body)


class UsageViewSet(viewsets.ViewSet):
    parser_classes = [JSONParser]

    @extend_schema(
        request=UsageBatchInputSerializer,
        responses={200: UsageBatchOutputSerializer, 400: OpenApiResponse(description="Rejected")},
    )
    def create(self, request):
        """Charges a batch of up to 10,000 usage records, all or nothing. Jobs already
        charged count as duplicates; a job reported with another amount is corrected.
        A retried batch gets the same answer and charges nothing twice."""
        envelope = UsageBatchInputSerializer(data=request.data)
        envelope.is_valid(raise_exception=True)
        cluster = cluster_for(request, envelope.validated_data["cluster"])
        result = usage_ingest(cluster=cluster, records=request.data["records"])
        return Response(UsageBatchOutputSerializer(result).data)


class CsvRenderer(renderers.BaseRenderer):
    """Lets a client ask for text/csv; the rejects action answers with its own response."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return str(data).encode() if data is not None else b""


class NotResumable(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "This import cannot be resumed now."
    default_code = "not_resumable"


class UsageImportViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Background imports of scheduler accounting files (sacct, slurmrestd, SWF): an
    importer token sees and starts those of its own cluster, a cluster admin those of
    their clusters, a superuser all."""

    serializer_class = UsageImportOutputSerializer
    queryset = UsageImport.objects.none()  # for the schema; get_queryset scopes every request
    lookup_field = "code"
    lookup_value_converter = "uuid"
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        token = self.request.auth if isinstance(self.request.auth, ApiToken) else None
        return usage_import_list_for(user=self.request.user, token=token)

    @extend_schema(
        request={"multipart/form-data": UsageImportInputSerializer},
        responses={202: UsageImportOutputSerializer},
    )
    def create(self, request):
        """Stores the file and queues its import (202). The file is read through first: a
        truncated or corrupt gzip, binary data or a file too large is refused with 400
        and nothing is stored."""
        data = UsageImportInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        cluster = cluster_for(request, v["cluster"])
        token = request.auth if isinstance(request.auth, ApiToken) else None
        usage_import = usage_import_create(
            cluster=cluster,
            fmt=v["format"],
            upload=v["file"],
            tz=v.get("tz", ""),
            actor=_actor(request),
            token=token,
        )
        body = UsageImportOutputSerializer(usage_import, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        responses={
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR, description="line,job_id,field,reason; one row per reject."
            )
        }
    )
    @action(detail=True, methods=["get"], renderer_classes=[JSONRenderer, CsvRenderer])
    def rejects(self, request, code=None):
        """The rejected lines as CSV, with their line numbers and reasons."""
        usage_import = self.get_object()
        response = StreamingHttpResponse(
            usage_import_rejects_csv(usage_import), content_type="text/csv; charset=utf-8"
        )
        name = f"rejects-{usage_import.code}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    @extend_schema(request=None, responses={202: UsageImportOutputSerializer})
    @action(detail=True, methods=["post"])
    def resume(self, request, code=None):
        """Queues a failed import again, or one whose worker stopped (no heartbeat for
        IMPORT_STALE_SECONDS); it goes on from its checkpoint, charging nothing twice."""
        usage_import = self.get_object()
        token = request.auth if isinstance(request.auth, ApiToken) else None
        try:
            usage_import = usage_import_resume(
                usage_import=usage_import, actor=_actor(request), token=token
            )
        except ImportNotResumable as exc:
            raise NotResumable(exc.messages[0]) from None
        body = UsageImportOutputSerializer(usage_import, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


_CLUSTER_NAME = OpenApiParameter(
    "name", str, OpenApiParameter.PATH, description="The cluster's name (Slurm ClusterName)."
)


class ClusterViewSet(viewsets.GenericViewSet):
    """Scheduler integration: what Slurm should enforce on a cluster, and what the sync
    client (client/su_sync.py) found and applied there."""

    queryset = Cluster.objects.none()  # for the schema; cluster_for checks every request
    serializer_class = SyncReportOutputSerializer
    lookup_field = "name"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"

    @extend_schema(parameters=[_CLUSTER_NAME], responses={200: DesiredStateSerializer})
    @action(detail=True, methods=["get"], url_path="desired-state")
    def desired_state(self, request, name=None):
        """Every account (allocation) and user association (member) on the cluster: whether
        it may run and its limits in Slurm's terms. One snapshot, not paginated, so the
        client never applies half of one state and half of another."""
        cluster = cluster_for(request, name)
        return Response(DesiredStateSerializer(desired_state_for(cluster=cluster)).data)

    @extend_schema(
        methods=["get"],
        parameters=[_CLUSTER_NAME],
        responses={200: SyncReportOutputSerializer(many=True)},
    )
    @extend_schema(
        methods=["post"],
        parameters=[_CLUSTER_NAME],
        request=SyncReportInputSerializer,
        responses={201: SyncReportOutputSerializer},
    )
    @action(detail=True, methods=["get", "post"], url_path="sync-reports")
    def sync_reports(self, request, name=None):
        """GET: the cluster's sync reports, newest first. POST: the sync client records a
        run (importer token of the cluster only)."""
        cluster = cluster_for(request, name)
        if request.method == "POST":
            if not isinstance(request.auth, ApiToken):
                raise PermissionDenied("Sync reports are posted by the cluster's importer token.")
            data = SyncReportInputSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            report = sync_report_create(token=request.auth, **data.validated_data)
            return Response(SyncReportOutputSerializer(report).data, status=status.HTTP_201_CREATED)
        page = self.paginate_queryset(sync_report_list_for_cluster(cluster=cluster))
        return self.get_paginated_response(SyncReportOutputSerializer(page, many=True).data)
