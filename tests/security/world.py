"""Two clusters, each with its own admin, project, allocation, members, usage, holds,
requests and importer token: every role has objects inside its scope (world A) and
objects outside it (world B), so a test can ask both "may you?" and "may you not?"."""

import itertools
from dataclasses import dataclass
from decimal import Decimal

from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from accounts.models import ApiToken, AuditEvent, Organization, User
from accounts.roles import cluster_admins_group
from accounts.services import audit_record, organization_create
from accounts.tokens import api_token_issue
from allocations import admission, services
from allocations.imports import usage_import_create
from allocations.models import (
    Allocation,
    ChangeRequest,
    Cluster,
    Hold,
    Membership,
    Rate,
    RateCorrection,
    Resource,
    SyncReport,
    TresMapping,
    Usage,
    UsageAdjustment,
    UsageImport,
)
from tests.conftest import END, RATE_START, START, make_user, usage

MINE, THEIRS = "mine", "theirs"
ANONYMOUS, STAFF, CLUSTER_ADMIN = "anonymous", "staff", "cluster_admin"
PI, MANAGER, MEMBER, OUTSIDER, IMPORTER = "pi", "manager", "member", "outsider", "importer"
ROLES = (ANONYMOUS, STAFF, CLUSTER_ADMIN, PI, MANAGER, MEMBER, OUTSIDER, IMPORTER)

_jobs = itertools.count(1)
_names = itertools.count(1)

SACCT_HEADER = (
    "JobIDRaw|JobID|Cluster|User|Account|Partition|AllocTRES|ElapsedRaw|Start|End|State\n"
)


@dataclass
class Side:
    """One cluster's objects."""

    cluster: Cluster
    resource: Resource
    allocation: Allocation
    member: User  # a member who charges the allocation
    pending: ChangeRequest
    hold: Hold
    token: ApiToken
    secret: str
    org: Organization
    audit: AuditEvent
    usage_import: UsageImport
    sync_report: SyncReport
    admin_user: User

    @property
    def project(self):
        return self.allocation.project

    @property
    def membership(self) -> Membership:
        return Membership.objects.get(allocation=self.allocation, user=self.member)

    @property
    def rate(self) -> Rate:
        return self.resource.rates.first()

    def fresh_membership(self) -> Membership:
        """A new member of the allocation, for changes that cannot be made twice."""
        user = make_user(f"m{next(_names)}", self.org)
        return services.membership_add(
            actor=self.allocation.project.pi, allocation=self.allocation, user=user
        )

    def new_cap(self) -> str:
        """A cap no one has set yet (setting the same cap again is refused)."""
        return str(next(_names))

    def fresh_user(self) -> User:
        return make_user(f"u{next(_names)}", self.org)

    def fresh_request(self) -> ChangeRequest:
        """A new pending request of the allocation, for decisions and cancellations."""
        return services.change_request_submit(
            actor=self.allocation.project.pi,
            allocation=self.allocation,
            su_delta="5",
            justification="A few more runs",
        )

    def fresh_import(self, *, failed: bool = True) -> UsageImport:
        """A new import of this cluster's; a failed one may be resumed."""
        usage_import = usage_import_create(
            cluster=self.cluster,
            fmt="sacct",
            upload=SimpleUploadedFile("sacct.txt", SACCT_HEADER.encode()),
            actor=self.admin_user,
        )
        if failed:
            UsageImport.objects.filter(pk=usage_import.pk).update(
                state=UsageImport.State.FAILED, error="Worker lost", finished_at=timezone.now()
            )
            usage_import.refresh_from_db()
        return usage_import

    def import_body(self) -> dict:
        return {
            "cluster": self.cluster.name,
            "format": "sacct",
            "file": SimpleUploadedFile("sacct.txt", SACCT_HEADER.encode()),
        }

    def fresh_manager(self) -> User:
        user = self.fresh_user()
        services.project_add_manager(actor=self.project.pi, project=self.project, user=user)
        return user

    def sync_report_body(self) -> dict:
        return {"mode": "DRY_RUN", "succeeded": True, "drift": [], "applied": []}

    def hold_body(self, job_id: str | None = None) -> dict:
        return {
            "cluster": self.cluster.name,
            "user": self.member.username,
            "allocation": self.allocation.name,
            "resource": self.resource.name,
            "estimate_su": "1",
            **({"job_id": job_id} if job_id else {}),
        }

    def new_job_id(self) -> str:
        return f"n{next(_jobs)}"

    def fresh_hold(self) -> Hold:
        hold, _ = admission.hold_create(
            cluster=self.cluster,
            actor=None,
            username=self.member.username,
            account=self.allocation.name,
            resource=self.resource.name,
            job_id=f"h{next(_jobs)}",
            estimate_su="1",
        )
        return hold

    def fresh_job(self) -> str:
        job_id = f"j{next(_jobs)}"
        services.usage_record(
            cluster=self.cluster,
            record=usage(self.allocation, self.member, self.resource, job_id, 1),
        )
        return job_id

    def usage_body(self) -> dict:
        return {
            "cluster": self.cluster.name,
            "records": [
                {
                    "job_id": f"u{next(_jobs)}",
                    "user": self.member.username,
                    "allocation": self.allocation.name,
                    "resource": self.resource.name,
                    "raw_unit_seconds": "3600",
                    "charged_at": "2026-03-01T12:00:00Z",
                }
            ],
        }

    def row(self, model):
        """One row of `model` on this side, for admin change pages."""
        allocation = self.allocation
        rows = {
            "allocations.project": lambda: allocation.project,
            "allocations.projectchange": lambda: allocation.project.changes.first(),
            "allocations.cluster": lambda: self.cluster,
            "allocations.resource": lambda: self.resource,
            "allocations.tresmapping": lambda: self.cluster.tres_mappings.first(),
            "allocations.rate": lambda: self.resource.rates.first(),
            "allocations.ratecorrection": lambda: RateCorrection.objects.filter(
                rate__resource=self.resource
            ).first(),
            "allocations.allocation": lambda: allocation,
            "allocations.changerequest": lambda: self.pending,
            "allocations.changerequestevent": lambda: self.pending.events.first(),
            "allocations.allocationchange": lambda: allocation.changes.first(),
            "allocations.membership": lambda: Membership.objects.get(
                allocation=allocation, user=self.member
            ),
            "allocations.membershipchange": lambda: Membership.objects.get(
                allocation=allocation, user=self.member
            ).changes.first(),
            "allocations.usage": lambda: Usage.objects.filter(allocation=allocation).first(),
            "allocations.usageadjustment": lambda: UsageAdjustment.objects.filter(
                allocation=allocation
            ).first(),
            "allocations.hold": lambda: self.hold,
            "allocations.usageimport": lambda: self.usage_import,
            "allocations.syncreport": lambda: self.sync_report,
            "accounts.organization": lambda: self.org,
            "accounts.user": lambda: self.member,
            "accounts.apitoken": lambda: self.token,
            "accounts.auditevent": lambda: self.audit,
            "auth.group": lambda: Group.objects.get(name="Cluster admins"),
            "axes.accessattempt": lambda: AccessAttempt.objects.filter(
                username=self.member.username
            ).first(),
            "axes.accesslog": lambda: AccessLog.objects.filter(
                username=self.member.username
            ).first(),
            "axes.accessfailurelog": lambda: AccessFailureLog.objects.filter(
                username=self.member.username
            ).first(),
        }
        return rows[model._meta.label_lower]()


@dataclass
class World:
    users: dict[str, User | None]
    a: Side  # inside the scope of every role but outsider and anonymous
    b: Side  # outside the scope of every role but staff

    def side(self, scope: str) -> Side:
        return self.a if scope == MINE else self.b


def _side_rows(side_cluster, resource, allocation, member, admin_user, org):
    TresMapping.objects.create(cluster=side_cluster, tres="cpu", resource=resource)
    RateCorrection.objects.create(
        rate=resource.rates.first(),
        old_su_per_unit_hour=resource.rates.first().su_per_unit_hour,
        new_su_per_unit_hour=resource.rates.first().su_per_unit_hour,
        reason="Checked",
    )
    services.usage_record(
        cluster=side_cluster, record=usage(allocation, member, resource, "first", 1)
    )
    charge = Usage.objects.get(allocation=allocation, job_id="first")
    UsageAdjustment.objects.create(
        usage=charge,
        allocation=allocation,
        user=member,
        kind="REFUND",
        su_delta=-charge.su_amount,
        reason="Node failure",
    )
    for model in (AccessAttempt, AccessLog, AccessFailureLog):
        extra = {"get_data": "", "post_data": "", "failures_since_start": 1}
        fields = {f.name for f in model._meta.fields}
        model.objects.create(
            username=member.username,
            ip_address="192.0.2.1",
            user_agent="test",
            http_accept="*/*",
            path_info="/admin/login/",
            **{k: v for k, v in extra.items() if k in fields},
        )
    pending = services.change_request_submit(
        actor=allocation.project.pi,
        allocation=allocation,
        su_delta="10",
        justification="More runs",
    )
    issued = api_token_issue(actor=admin_user, cluster=side_cluster, name="importer")
    hold, _ = admission.hold_create(
        cluster=side_cluster,
        actor=None,
        username=member.username,
        account=allocation.name,
        resource=resource.name,
        job_id="held",
        estimate_su="1",
    )
    audit = audit_record(action="SIGN_IN", actor=member, target=member)
    sync_report = services.sync_report_create(
        token=issued.token, mode="DRY_RUN", succeeded=True, drift=[], applied=[]
    )
    side = Side(
        cluster=side_cluster,
        resource=resource,
        allocation=allocation,
        member=member,
        pending=pending,
        hold=hold,
        token=issued.token,
        secret=issued.secret,
        org=org,
        audit=audit,
        usage_import=None,
        sync_report=sync_report,
        admin_user=admin_user,
    )
    side.usage_import = side.fresh_import(failed=False)
    return side


def build_world(*, staff, alice, bob, charlie, dana, allocation, gpu) -> World:
    group = cluster_admins_group()
    erin = make_user("erin", alice.organization)
    services.project_add_manager(actor=alice, project=allocation.project, user=erin)
    dana.is_staff = True
    dana.save()
    dana.groups.add(group)

    # World B: another cluster, its admin, a PI and her allocation.
    org2 = organization_create(name="Other College")
    frank = make_user("frank", org2, is_staff=True)
    frank.groups.add(group)
    greta = make_user("greta", org2)
    cluster2 = Cluster.objects.create(name="cpu2", title="Other cluster")
    cluster2.admins.add(frank)
    cores = Resource.objects.create(cluster=cluster2, name="Cores", kind="CPU", unit="core")
    services.rate_add(actor=None, resource=cores, su_per_unit_hour=Decimal("1"), start=RATE_START)
    project2 = services.project_create(actor=greta, title="Climate", pi=greta)
    request2 = services.allocation_request_create(
        actor=greta,
        project=project2,
        cluster=cluster2,
        name="climate-cpu",
        resources=[cores],
        su_amount="500",
        start=START,
        end=END,
        justification="Ensembles",
    )
    services.change_request_approve(actor=frank, request=request2)
    allocation2 = request2.allocation
    allocation2.refresh_from_db()

    a = _side_rows(allocation.cluster, gpu, allocation, bob, dana, alice.organization)
    b = _side_rows(cluster2, cores, allocation2, greta, frank, org2)
    users = {
        ANONYMOUS: None,
        STAFF: staff,
        CLUSTER_ADMIN: dana,
        PI: alice,
        MANAGER: erin,
        MEMBER: bob,
        OUTSIDER: charlie,
        IMPORTER: None,
    }
    return World(users=users, a=a, b=b)
