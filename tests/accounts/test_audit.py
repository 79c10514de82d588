"""The audit log: each security-relevant act leaves one append-only event naming who,
what, the target's public id, when and from where."""

import pytest
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from accounts.models import AuditEvent
from accounts.tokens import api_token_issue, api_token_revoke
from allocations import services
from allocations.models import Membership
from tests.conftest import make_user


def events(action=None):
    qs = AuditEvent.objects.order_by("pk")
    return list(qs.filter(action=action) if action else qs)


def sign_in_form(client, username, password):
    return client.post(
        reverse("admin:login"), {"username": username, "password": password, "next": "/admin/"}
    )


class TestSignIn:
    def test_it_records_sign_in_failure_and_sign_out_with_the_address(self, client, staff):
        sign_in_form(client, "root", "wrong")
        sign_in_form(client, "root", "pw-rootroot")
        client.post(reverse("admin:logout"))

        failed, signed_in, signed_out = (
            events("SIGN_IN_FAILED"),
            events("SIGN_IN"),
            events("SIGN_OUT"),
        )
        assert [(e.actor, e.actor_label, e.ip) for e in failed] == [(None, "root", "127.0.0.1")]
        assert [(e.actor, e.target_code, e.ip) for e in signed_in] == [
            (staff, staff.code, "127.0.0.1")
        ]
        assert [e.actor for e in signed_out] == [staff]

    def test_behind_a_proxy_the_address_comes_from_the_configured_header(
        self, client, staff, settings
    ):
        settings.CLIENT_IP_HEADER = "HTTP_X_REAL_IP"
        settings.AXES_FAILURE_LIMIT = 2
        for address in ("198.51.100.1", "198.51.100.2", "198.51.100.1"):
            client.post(
                reverse("admin:login"),
                {"username": "root", "password": "wrong"},
                HTTP_X_REAL_IP=address,
            )
        assert [e.ip for e in events("SIGN_IN_FAILED")] == [
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.1",
        ]
        # Two failures from .1 lock root out there; .2 is still free.
        assert [(e.actor_label, e.ip) for e in events("LOCKED_OUT")] == [("root", "198.51.100.1")]

    def test_junk_in_the_address_header_is_recorded_as_no_address(self, client, staff, settings):
        settings.CLIENT_IP_HEADER = "HTTP_X_REAL_IP"
        sign_in_form(client, "root", "wrong")
        client.post(
            reverse("admin:login"),
            {"username": "root", "password": "wrong"},
            HTTP_X_REAL_IP="<script>",
        )
        assert [e.ip for e in events("SIGN_IN_FAILED")] == [None, None]

    def test_the_password_is_never_recorded(self, client, staff):
        sign_in_form(client, "root", "hunter2-secret")
        assert "hunter2" not in str([(e.actor_label, e.details) for e in events()])

    def test_a_lockout_is_recorded_and_explained(self, client, staff, settings):
        settings.AXES_FAILURE_LIMIT = 3
        for _ in range(3):
            sign_in_form(client, "root", "wrong")
        locked = sign_in_form(client, "root", "pw-rootroot")  # right, but too late

        assert locked.status_code == 429
        assert "Sign-in temporarily locked" in locked.content.decode()
        assert "30 minutes" in locked.content.decode()
        assert locked["Retry-After"] == "1800"
        assert "_auth_user_id" not in client.session
        # Once when the limit is reached, once more for the refused attempt.
        assert {e.actor_label for e in events("LOCKED_OUT")} == {"root"}

    def test_another_address_is_not_locked_out(self, client, staff, settings):
        settings.AXES_FAILURE_LIMIT = 2
        for _ in range(2):
            sign_in_form(client, "root", "wrong")
        elsewhere = client.post(
            reverse("admin:login"),
            {"username": "root", "password": "pw-rootroot", "next": "/admin/"},
            REMOTE_ADDR="198.51.100.7",
        )
        assert elsewhere.status_code == 302


class TestTokens:
    def test_issue_and_revoke_are_recorded_once(self, dana, cluster):
        issued = api_token_issue(actor=dana, cluster=cluster, name="sacct")
        api_token_revoke(actor=dana, token=issued.token)
        api_token_revoke(actor=dana, token=issued.token)  # already revoked: no new event

        rows = [(e.action, e.actor, e.target_code) for e in events() if "TOKEN" in e.action]
        assert rows == [
            ("TOKEN_ISSUED", dana, issued.token.code),
            ("TOKEN_REVOKED", dana, issued.token.code),
        ]
        assert issued.secret not in str([e.details for e in events()])

    def test_a_refused_issue_records_nothing(self, bob, cluster):
        with pytest.raises(Exception, match="Only admins"):
            api_token_issue(actor=bob, cluster=cluster, name="x")
        assert events("TOKEN_ISSUED") == []


class TestRoles:
    def test_site_admin_and_staff_flags(self, bob):
        AuditEvent.objects.all()  # nothing yet about bob's roles
        bob.is_superuser = True
        bob.save()
        bob.is_superuser = False
        bob.is_staff = True
        bob.save()
        bob.is_active = False
        bob.save(update_fields=["is_active"])
        bob.save(update_fields=["last_login"])  # touches no role

        rows = [(e.action, e.details) for e in events() if e.target_code == bob.code]
        assert rows == [
            ("ROLE_GRANTED", {"role": "superuser"}),
            ("ROLE_REVOKED", {"role": "superuser"}),
            ("ROLE_GRANTED", {"role": "staff"}),
            ("STATUS_CHANGED", {"status": "inactive"}),
        ]

    def test_a_new_superuser_is_recorded(self, org):
        root = make_user("root2", org, is_staff=True, is_superuser=True)
        assert {
            e.details["role"] for e in events("ROLE_GRANTED") if e.target_code == root.code
        } == {
            "superuser",
            "staff",
        }

    def test_cluster_admins_from_either_side_and_cleared(self, cluster, bob, charlie):
        cluster.admins.add(bob)
        charlie.administered_clusters.add(cluster)
        bob.administered_clusters.remove(cluster)
        cluster.admins.clear()  # dana (the fixture's admin) and charlie

        rows = [
            (e.action, e.target_label.split()[-1], e.details["cluster_code"])
            for e in events()
            if e.details.get("role") == "cluster_admin"
        ]
        code = str(cluster.code)
        assert rows[:4] == [
            ("ROLE_GRANTED", "(dana)", code),  # the fixture's admin
            ("ROLE_GRANTED", "(bob)", code),
            ("ROLE_GRANTED", "(charlie)", code),
            ("ROLE_REVOKED", "(bob)", code),
        ]
        assert sorted(rows[4:]) == [
            ("ROLE_REVOKED", "(charlie)", code),
            ("ROLE_REVOKED", "(dana)", code),
        ]

    def test_project_managers(self, project, alice, bob):
        services.project_add_manager(actor=alice, project=project, user=bob)
        services.project_remove_manager(actor=alice, project=project, user=bob)
        rows = [
            (e.action, e.details["project_code"])
            for e in events()
            if e.details.get("role") == "project_manager"
        ]
        assert rows == [("ROLE_GRANTED", str(project.code)), ("ROLE_REVOKED", str(project.code))]


class TestStatusAndDecisions:
    def test_status_changes_at_three_levels(self, allocation, dana, alice, bob):
        services.project_set_status(
            actor=dana, project=allocation.project, status="INACTIVE", reason="Audit"
        )
        services.allocation_set_status(
            actor=dana, allocation=allocation, status="INACTIVE", reason="Freeze"
        )
        membership = Membership.objects.get(allocation=allocation, user=bob)
        services.membership_set_status(actor=alice, membership=membership, status="INACTIVE")

        rows = [
            (e.actor, e.target_type, e.target_code, e.details) for e in events("STATUS_CHANGED")
        ]
        assert rows == [
            (
                dana,
                "allocations.project",
                allocation.project.code,
                {"status": "INACTIVE", "reason": "Audit"},
            ),
            (
                dana,
                "allocations.allocation",
                allocation.code,
                {"status": "INACTIVE", "reason": "Freeze"},
            ),
            (
                alice,
                "allocations.membership",
                membership.code,
                {"status": "INACTIVE", "reason": ""},
            ),
        ]

    def test_approvals_and_rejections(self, allocation, dana, alice):
        approved = events("REQUEST_APPROVED")  # the fixture's allocation was approved
        assert [(e.actor, e.details["su_approved"]) for e in approved] == [(dana, "1000.0000")]
        request = services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="50", justification="More"
        )
        services.change_request_reject(actor=dana, request=request, reason="Not now")
        [rejected] = events("REQUEST_REJECTED")
        assert (rejected.target_code, rejected.details["reason"]) == (request.code, "Not now")


class TestAppendOnly:
    def test_the_orm_refuses_updates_and_deletes(self, staff):
        event = events()[0]
        with pytest.raises(TypeError):
            AuditEvent.objects.update(actor_label="someone else")
        with pytest.raises(TypeError):
            AuditEvent.objects.filter(pk=event.pk).delete()
        with pytest.raises(TypeError):
            event.save()
        with pytest.raises(TypeError):
            event.delete()

    @pytest.mark.skipif(connection.vendor != "postgresql", reason="the trigger is PostgreSQL's")
    @pytest.mark.parametrize(
        "sql",
        ["UPDATE accounts_auditevent SET actor_label = 'x'", "DELETE FROM accounts_auditevent"],
    )
    def test_the_database_refuses_raw_sql(self, staff, sql):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql)


class TestAuditAdmin:
    def test_site_admins_read_and_filter_it_and_nobody_edits_it(self, client, staff, bob):
        bob.is_staff = True
        bob.save()
        client.force_login(staff)
        listing = client.get(
            reverse("admin:accounts_auditevent_changelist") + "?action=ROLE_GRANTED"
        )
        assert listing.status_code == 200
        assert (
            listing.context["cl"].result_count
            == AuditEvent.objects.filter(action="ROLE_GRANTED").count()
        )
        event = events("ROLE_GRANTED")[-1]
        before = list(AuditEvent.objects.values())
        page = client.post(
            reverse("admin:accounts_auditevent_change", args=[event.pk]), {"actor_label": "x"}
        )
        assert page.status_code == 403
        assert client.get(reverse("admin:accounts_auditevent_add")).status_code == 403
        assert (
            client.post(
                reverse("admin:accounts_auditevent_delete", args=[event.pk]), {"post": "yes"}
            ).status_code
            == 403
        )
        assert list(AuditEvent.objects.values()) == before
