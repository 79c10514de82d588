"""API shapes. Serializers check shape only; the rules live in the services."""

from rest_framework import serializers

from allocations.models import Allocation, Hold


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


class EstimateSerializer(serializers.Serializer):
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


class RefundInputSerializer(serializers.Serializer):
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


class UsageBatchInputSerializer(serializers.Serializer):
    cluster = serializers.CharField(max_length=64)
    # Here only the envelope's shape; see UsageRecordsField.
    records = UsageRecordsField()


class UsageBatchOutputSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    corrected = serializers.IntegerField()
    su_charged = serializers.DecimalField(max_digits=21, decimal_places=4)
