"""API shapes. Serializers check shape only; the rules live in the services."""

from dataclasses import asdict

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from allocations.models import Allocation, Hold, SyncReport, UsageImport
from allocations.selectors import usage_import_progress


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know: a misspelt optional field must not be ignored
    silently (an estimate_sus would otherwise pass as no estimate at all)."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in data if key not in self.fields)
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


class SUField(serializers.CharField):
    """An SU amount as a decimal string (or integer); the service parses it, so floats,
    NaN and Infinity get the same clear refusal everywhere."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, str | int):
            raise serializers.ValidationError('Give a decimal number as a string, e.g. "12.5".')
        return super().to_internal_value(str(data))


class BalanceSerializer(serializers.Serializer):
    budget = serializers.DecimalField(max_digits=20, decimal_places=4, source="su_budget")
    used = serializers.DecimalField(max_digits=20, decimal_places=4, source="su_used")
    held = serializers.DecimalField(max_digits=20, decimal_places=4, source="su_held")
    remaining = serializers.DecimalField(max_digits=21, decimal_places=4, source="su_remaining")
    overdrawn = serializers.BooleanField(source="is_overdrawn")


class MemberBalanceSerializer(serializers.Serializer):
    user = serializers.CharField(source="user.username")
    status = serializers.CharField()
    cap = serializers.DecimalField(max_digits=20, decimal_places=4, source="su_cap")
    used = serializers.DecimalField(max_digits=20, decimal_places=4, source="su_used")
    held = serializers.DecimalField(max_digits=20, decimal_places=4, source="su_held")
    remaining = serializers.DecimalField(max_digits=21, decimal_places=4)


class AllocationOutputSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.title")
    project_code = serializers.UUIDField(source="project.code")
    project_status = serializers.CharField(source="project.status")
    cluster = serializers.CharField(source="cluster.name")
    balance = BalanceSerializer(source="*")

    class Meta:
        model = Allocation
        fields = [
            "code",
            "name",
            "cluster",
            "project",
            "project_code",
            "project_status",
            "status",
            "start",
            "end",
            "balance",
        ]


class EstimateSerializer(StrictSerializer):
    cluster = serializers.CharField(max_length=64)
    user = serializers.CharField(max_length=150)
    allocation = serializers.CharField(max_length=64, help_text="The Slurm account name.")
    resource = serializers.CharField(max_length=100)
    estimate_su = SUField(required=False, allow_null=True)
    count = SUField(required=False, allow_null=True, help_text="How many units (e.g. GPUs).")
    wall_seconds = serializers.IntegerField(required=False, allow_null=True, min_value=1)


class AdmissionOutputSerializer(serializers.Serializer):
    allowed = serializers.BooleanField()
    reason = serializers.CharField(allow_null=True)
    detail = serializers.CharField(source="message")
    estimate_su = serializers.DecimalField(max_digits=20, decimal_places=4, allow_null=True)
    allocation_remaining = serializers.DecimalField(
        max_digits=21, decimal_places=4, allow_null=True
    )
    member_remaining = serializers.DecimalField(max_digits=21, decimal_places=4, allow_null=True)


class HoldInputSerializer(EstimateSerializer):
    job_id = serializers.CharField(max_length=64)


class HoldOutputSerializer(serializers.ModelSerializer):
    cluster = serializers.CharField(source="cluster.name")
    allocation = serializers.CharField(source="allocation.name")
    user = serializers.CharField(source="user.username")
    resource = serializers.CharField(source="resource.name")

    class Meta:
        model = Hold
        fields = [
            "code",
            "cluster",
            "allocation",
            "user",
            "resource",
            "job_id",
            "su_amount",
            "state",
            "created",
            "expires_at",
            "closed_at",
        ]


class RefundInputSerializer(StrictSerializer):
    cluster = serializers.CharField(max_length=64)
    job_id = serializers.CharField(max_length=64)
    user = serializers.CharField(max_length=150, required=False, allow_blank=True)
    reason = serializers.CharField(max_length=2000)


class AdjustmentOutputSerializer(serializers.Serializer):
    job_id = serializers.CharField(source="usage.job_id")
    resource = serializers.CharField(source="usage.resource.name")
    user = serializers.CharField(source="usage.user.username")
    kind = serializers.CharField()
    su_delta = serializers.DecimalField(max_digits=20, decimal_places=4)
    reason = serializers.CharField()


class UsageRecordsField(serializers.ListField):
    """A non-empty list of objects. Records are checked by ingest.usage_ingest in bulk:
    a field per value (DictField's children) would cost more than charging them."""

    def __init__(self, **kwargs):
        super().__init__(child=serializers.DictField(), allow_empty=False, **kwargs)

    def to_internal_value(self, data):
        if isinstance(data, str | dict) or not isinstance(data, list):
            self.fail("not_a_list", input_type=type(data).__name__)
        if not data:
            self.fail("empty")
        message = self.child.error_messages["not_a_dict"]
        errors = {
            index: [message.format(input_type=type(item).__name__)]
            for index, item in enumerate(data)
            if not isinstance(item, dict)
        }
        if errors:
            raise serializers.ValidationError(errors)
        return data


class UsageBatchInputSerializer(StrictSerializer):
    cluster = serializers.CharField(max_length=64)
    # Here only the envelope's shape; see UsageRecordsField.
    records = UsageRecordsField()


class UsageBatchOutputSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    corrected = serializers.IntegerField()
    su_charged = serializers.DecimalField(max_digits=21, decimal_places=4)


class UsageImportInputSerializer(serializers.Serializer):
    cluster = serializers.CharField(max_length=64)
    format = serializers.ChoiceField(choices=UsageImport.Format.choices)
    tz = serializers.CharField(
        max_length=64,
        required=False,
        allow_blank=True,
        help_text="sacct only: the zone sacct printed times in (default UTC).",
    )
    file = serializers.FileField(help_text="The accounting file, plain text or gzip.")


class ImportProgressSerializer(serializers.Serializer):
    percent = serializers.IntegerField()
    rows_done = serializers.IntegerField(help_text="Parser rows handled and committed.")
    rows_total = serializers.IntegerField(help_text="Rows the file holds, counted at upload.")
    rows_per_second = serializers.DecimalField(max_digits=12, decimal_places=1, allow_null=True)
    eta_seconds = serializers.IntegerField(allow_null=True)
    bytes_read = serializers.IntegerField()
    lines_read = serializers.IntegerField()


class ImportCountersSerializer(serializers.Serializer):
    jobs_charged = serializers.IntegerField()
    usage_created = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    corrected = serializers.IntegerField()
    skipped = serializers.IntegerField()
    rejected_lines = serializers.IntegerField()
    uncharged_jobs = serializers.IntegerField(help_text="Good jobs of rejected batches.")
    su_charged = serializers.DecimalField(max_digits=21, decimal_places=4)


class ImportLinksSerializer(serializers.Serializer):
    self = serializers.URLField()
    rejects = serializers.URLField()
    resume = serializers.URLField()


class UsageImportOutputSerializer(serializers.ModelSerializer):
    cluster = serializers.CharField(source="cluster.name")
    started_by = serializers.CharField()
    progress = serializers.SerializerMethodField()
    counters = ImportCountersSerializer(source="*")
    links = serializers.SerializerMethodField()

    class Meta:
        model = UsageImport
        fields = [
            "code",
            "cluster",
            "format",
            "tz",
            "original_name",
            "size",
            "state",
            "error",
            "started_by",
            "attempts",
            "created",
            "started_at",
            "heartbeat_at",
            "finished_at",
            "progress",
            "counters",
            "links",
        ]

    @extend_schema_field(ImportProgressSerializer)
    def get_progress(self, usage_import: UsageImport) -> dict:
        progress = usage_import_progress(usage_import)
        return ImportProgressSerializer(
            {
                **asdict(progress),
                "bytes_read": usage_import.bytes_read,
                "lines_read": usage_import.lines_read,
            }
        ).data

    @extend_schema_field(ImportLinksSerializer)
    def get_links(self, usage_import: UsageImport) -> dict:
        request = self.context.get("request")
        code = usage_import.code

        def url(name: str) -> str:
            path = reverse(name, kwargs={"code": code})
            return request.build_absolute_uri(path) if request is not None else path

        return {
            "self": url("usageimport-detail"),
            "rejects": url("usageimport-rejects"),
            "resume": url("usageimport-resume"),
        }


# --- scheduler sync (allocations/slurm.py) ---------------------------------------------


class UserLimitsSerializer(serializers.Serializer):
    user = serializers.CharField(help_text="The Slurm user name.")
    status = serializers.CharField(help_text="The membership's status.")
    may_run = serializers.BooleanField()
    reason = serializers.CharField(allow_null=True, help_text="Why not, as admission's reasons.")
    cap = serializers.DecimalField(max_digits=20, decimal_places=4, allow_null=True)
    remaining_su = serializers.DecimalField(
        max_digits=21, decimal_places=4, allow_null=True, help_text="Under the cap; null: no cap."
    )
    billing_minutes = serializers.IntegerField(
        allow_null=True,
        help_text="Headroom of the user association's GrpTRESMins on billing; null: no limit.",
    )
    grp_jobs = serializers.IntegerField(allow_null=True, help_text="0 blocks; null: no limit.")


class AccountLimitsSerializer(serializers.Serializer):
    account = serializers.CharField(help_text="The Slurm account: the allocation's name.")
    allocation = serializers.UUIDField()
    description = serializers.CharField()
    status = serializers.CharField(help_text="The allocation's status.")
    may_run = serializers.BooleanField()
    reason = serializers.CharField(allow_null=True)
    remaining_su = serializers.DecimalField(max_digits=21, decimal_places=4)
    billing_minutes = serializers.IntegerField(
        help_text="Headroom of the account's GrpTRESMins on billing (remaining SUs, rounded down)."
    )
    grp_jobs = serializers.IntegerField(allow_null=True, help_text="0 blocks; null: no limit.")
    users = UserLimitsSerializer(many=True)


class BillingWeightSerializer(serializers.Serializer):
    partition = serializers.CharField(allow_blank=True, help_text="Blank: every partition.")
    tres = serializers.CharField()
    resource = serializers.CharField()
    weight = serializers.DecimalField(
        max_digits=40,
        decimal_places=6,
        allow_null=True,
        help_text="The TRESBillingWeights entry for the rate in force; null: no rate in force.",
    )


class DesiredStateSerializer(serializers.Serializer):
    cluster = serializers.CharField()
    generated_at = serializers.DateTimeField()
    tres = serializers.CharField(help_text="The TRES the minutes are counted on.")
    su_per_billing_unit_hour = serializers.DecimalField(max_digits=20, decimal_places=6)
    billing_weights = BillingWeightSerializer(many=True)
    accounts = AccountLimitsSerializer(many=True)


class SyncDriftSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=["missing_account", "missing_user", "limits", "unknown_user"]
    )
    account = serializers.CharField(max_length=64)
    user = serializers.CharField(max_length=150, allow_blank=True, required=False, default="")
    current = serializers.CharField(max_length=500, allow_blank=True, required=False, default="")
    desired = serializers.CharField(max_length=500, allow_blank=True, required=False, default="")


class SyncReportInputSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(choices=SyncReport.Mode.choices)
    succeeded = serializers.BooleanField()
    drift = SyncDriftSerializer(many=True, max_length=50000)
    applied = serializers.ListField(
        child=serializers.CharField(max_length=4000),
        max_length=50000,
        help_text="The sacctmgr commands that succeeded, in order.",
    )
    error = serializers.CharField(max_length=10000, allow_blank=True, required=False, default="")
    client_version = serializers.CharField(
        max_length=32, allow_blank=True, required=False, default=""
    )


class SyncReportOutputSerializer(serializers.ModelSerializer):
    cluster = serializers.CharField(source="cluster.name")
    token = serializers.CharField(source="token.name", allow_null=True, default=None)
    drift = SyncDriftSerializer(many=True)
    applied = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = SyncReport
        fields = [
            "code",
            "cluster",
            "created",
            "mode",
            "succeeded",
            "drift_count",
            "drift",
            "applied",
            "error",
            "client_version",
            "token",
        ]
