"""Two clusters, each with its own admin, project, allocation, members, usage, holds,
requests and importer token: every role has objects inside its scope (world A) and
objects outside it (world B), so a test can ask both "may you?" and "may you not?"."""

import itertools
from dataclasses import dataclass
from decimal import Decimal

from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib.auth.models import Group

from accounts.models import ApiToken, AuditEvent, Organization, User
from accounts.roles import cluster_admins_group
from accounts.services import audit_record, organization_create
from accounts.tokens import api_token_issue
from allocations import admission, services
from allocations.models import (
    Allocation,
    ChangeRequest,
    Cluster,
    Hold,
    Membership,
    RateCorrection,
    Resource,
    TresMapping,
    Usage,
    UsageAdjustment,
)
from tests.conftest import END, RATE_START, START, make_user, usage

MINE, THEIRS = "mine", "theirs"
ANONYMOUS, STAFF, CLUSTER_ADMIN = "anonymous", "staff", "cluster_admin"
PI, MANAGER, MEMBER, OUTSIDER, IMPORTER = "pi", "manager", "member", "outsider", "importer"
ROLES = (ANONYMOUS, STAFF, CLUSTER_ADMIN, PI, MANAGER, MEMBER, OUTSIDER, IMPORTER)

_jobs = itertools.count(1)


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
    return Side(
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
    )


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
