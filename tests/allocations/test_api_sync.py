"""The scheduler sync API: the desired state of a cluster in Slurm's terms, and sync reports."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.tokens import api_token_issue
from allocations import services
from allocations.models import Cluster, Membership, Resource, Status, SyncReport, TresMapping
from allocations.selectors import desired_state_for
from allocations.slurm import billing_minutes
from tests.allocations.dbstate import unchanged
from tests.conftest import END, NOW, START, client_for, make_user, usage

DESIRED = "/api/v1/clusters/gpu1/desired-state/"
REPORTS = "/api/v1/clusters/gpu1/sync-reports/"


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: NOW)


@pytest.fixture
def secret(cluster, dana):
    return api_token_issue(actor=dana, cluster=cluster, name="slurm sync").secret


@pytest.fixture
def other_secret(dana):
    other = Cluster.objects.create(name="cpu2")
    other.admins.add(dana)
    return api_token_issue(actor=dana, cluster=other, name="cpu2 sync").secret


def account_of(body, name="folding-gpu"):
    return next(a for a in body["accounts"] if a["account"] == name)


def user_of(account, name):
    return next(u for u in account["users"] if u["user"] == name)


def report_body(**values):
    return {
        "mode": "APPLY",
        "succeeded": True,
        "drift": [
            {
                "kind": "limits",
                "account": "folding-gpu",
                "user": "bob",
                "current": "GrpJobs=none GrpTRESMins=billing=18000",
                "desired": "GrpJobs=0 GrpTRESMins=billing=18000",
            }
        ],
        "applied": ["sacctmgr --immediate modify user where name=bob set GrpJobs=0"],
        "error": "",
        "client_version": "1.1",
    } | values


class TestBillingMinutes:
    @pytest.mark.parametrize(
        ("su", "rate", "minutes"),
        [
            ("1000", "1", 60000),
            ("999.9999", "1", 59999),  # 59999.994 rounds down, never up
            ("0.0166", "1", 0),  # under one minute: nothing
            ("1000", "0.7", 85714),  # 85714.28...
            ("1", "0.000001", 60000000),
            ("0", "1", 0),
            ("-25", "1", 0),  # overdrawn: no headroom, never a negative limit
        ],
    )
    def test_it_rounds_down_to_whole_minutes(self, su, rate, minutes):
        assert billing_minutes(Decimal(su), Decimal(rate)) == minutes


class TestDesiredState:
    def test_it_maps_budgets_and_caps_to_billing_minutes(self, allocation, bob, cpu, gpu):
        # bob: 10 GPU-hours at 2 SU and 1 core-hour at 0.01 SU = 20.01 SU.
        services.usage_record_batch(
            cluster=allocation.cluster,
            records=[usage(allocation, bob, gpu, "1", 10), usage(allocation, bob, cpu, "2", 1)],
        )

        body = client_for(allocation.cluster.admins.get()).get(DESIRED).json()

        assert body["cluster"] == "gpu1"
        assert body["tres"] == "billing"
        assert body["su_per_billing_unit_hour"] == "1.000000"
        account = account_of(body)
        assert account | {"users": None} == {
            "account": "folding-gpu",
            "allocation": str(allocation.code),
            "description": "Protein folding",
            "status": "ACTIVE",
            "may_run": True,
            "reason": None,
            "remaining_su": "979.9900",
            "billing_minutes": 58799,  # 58799.4, rounded down
            "grp_jobs": None,
            "users": None,
        }
        assert user_of(account, "alice") == {
            "user": "alice",
            "status": "ACTIVE",
            "may_run": True,
            "reason": None,
            "cap": None,
            "remaining_su": None,
            "billing_minutes": None,
            "grp_jobs": None,
        }
        assert user_of(account, "bob") == {
            "user": "bob",
            "status": "ACTIVE",
            "may_run": True,
            "reason": None,
            "cap": "300.0000",
            "remaining_su": "279.9900",
            "billing_minutes": 16799,
            "grp_jobs": None,
        }

    def test_it_converts_at_the_clusters_billing_rate(self, allocation, secret):
        Cluster.objects.filter(pk=allocation.cluster_id).update(
            su_per_billing_unit_hour=Decimal("0.7")
        )

        body = client_for(secret=secret).get(DESIRED).json()

        assert account_of(body)["billing_minutes"] == 85714
        assert user_of(account_of(body), "bob")["billing_minutes"] == 25714

    def test_it_gives_the_billing_weights_of_the_rates_in_force(self, allocation, staff, cpu, gpu):
        cluster = allocation.cluster
        memory = Resource.objects.create(cluster=cluster, name="Memory", kind="MEMORY", unit="GB")
        TresMapping.objects.create(cluster=cluster, tres="cpu", resource=cpu)
        TresMapping.objects.create(cluster=cluster, tres="gres/gpu:h200", resource=gpu)
        TresMapping.objects.create(
            cluster=cluster, partition="big", tres="mem", resource=memory, scale=Decimal(1) / 1024
        )
        Cluster.objects.filter(pk=cluster.pk).update(su_per_billing_unit_hour=Decimal("0.01"))

        weights = client_for(staff).get(DESIRED).json()["billing_weights"]

        assert weights == [
            {"partition": "", "tres": "cpu", "resource": "CPU", "weight": "1.000000"},
            {
                "partition": "",
                "tres": "gres/gpu:h200",
                "resource": "GPU H200",
                "weight": "200.000000",
            },
            # No rate is in force for memory: Slurm should not bill it.
            {"partition": "big", "tres": "mem", "resource": "Memory", "weight": None},
        ]
        Cluster.objects.filter(pk=cluster.pk).update(su_per_billing_unit_hour=Decimal("0.7"))
        weights = client_for(staff).get(DESIRED).json()["billing_weights"]
        # 2 / 0.7 = 2.857142857...: rounded up, so Slurm never counts less than the portal.
        assert weights[1]["weight"] == "2.857143"

    def test_a_frozen_project_blocks_its_accounts_not_each_member(self, allocation, staff):
        services.project_set_status(
            actor=staff, project=allocation.project, status=Status.INACTIVE, reason="Audit"
        )

        account = account_of(client_for(staff).get(DESIRED).json())

        assert (account["may_run"], account["reason"], account["grp_jobs"]) == (
            False,
            "project_inactive",
            0,
        )
        # The SUs stay as they were: unfreezing restores exactly the same limits.
        assert account["billing_minutes"] == 60000
        bob = user_of(account, "bob")
        assert (bob["may_run"], bob["reason"], bob["grp_jobs"]) == (False, "project_inactive", None)

    def test_a_frozen_or_removed_member_is_blocked_on_their_own(self, allocation, alice, staff):
        bob = Membership.objects.get(allocation=allocation, user__username="bob")
        services.membership_set_status(actor=alice, membership=bob, status=Status.INACTIVE)

        account = account_of(client_for(staff).get(DESIRED).json())

        assert account["may_run"] is True
        entry = user_of(account, "bob")
        assert (entry["may_run"], entry["reason"], entry["grp_jobs"]) == (
            False,
            "membership_inactive",
            0,
        )
        services.membership_remove(actor=alice, membership=bob)
        entry = user_of(account_of(client_for(staff).get(DESIRED).json()), "bob")
        assert (entry["status"], entry["grp_jobs"]) == ("DELETED", 0)

    def test_an_exhausted_allocation_is_blocked_with_no_headroom(
        self, allocation, alice, staff, gpu
    ):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, alice, gpu, "1", 510)
        )

        account = account_of(client_for(staff).get(DESIRED).json())

        assert account["remaining_su"] == "-20.0000"
        assert (account["may_run"], account["reason"], account["grp_jobs"]) == (
            False,
            "allocation_exhausted",
            0,
        )
        assert account["billing_minutes"] == 0

    def test_a_member_past_their_cap_is_blocked(self, allocation, bob, staff, gpu):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 150)
        )

        entry = user_of(account_of(client_for(staff).get(DESIRED).json()), "bob")

        assert (entry["may_run"], entry["reason"], entry["grp_jobs"], entry["billing_minutes"]) == (
            False,
            "member_cap_exhausted",
            0,
            0,
        )

    def test_an_allocation_outside_its_dates_is_blocked(self, allocation, staff, monkeypatch):
        monkeypatch.setattr(timezone, "now", lambda: dt.datetime(END.year + 1, 1, 2, tzinfo=dt.UTC))

        account = account_of(client_for(staff).get(DESIRED).json())

        assert (account["reason"], account["grp_jobs"]) == ("allocation_ended", 0)

    def test_it_reads_a_cluster_in_two_queries_whatever_its_size(
        self, allocation, alice, django_assert_num_queries
    ):
        for i in range(3):
            services.membership_add(
                actor=alice, allocation=allocation, user=make_user(f"member{i}"), su_cap="10"
            )
        request = services.allocation_request_create(
            actor=alice,
            project=allocation.project,
            cluster=allocation.cluster,
            name="folding-2",
            resources=list(allocation.resources.all()),
            su_amount="50",
            start=START,
            end=END,
            justification="More",
        )
        services.change_request_approve(actor=allocation.cluster.admins.get(), request=request)

        # 1. the cluster's allocations with their projects; 2. their memberships with users;
        # 3. the cluster's TRES mappings with their resources; 4. the rates in force.
        with django_assert_num_queries(4):
            state = desired_state_for(cluster=allocation.cluster)

        assert [a.account for a in state.accounts] == ["folding-2", "folding-gpu"]
        assert len(state.accounts[1].users) == 5

    def test_importers_and_admins_may_read_it_members_and_outsiders_may_not(
        self, allocation, alice, bob, charlie, dana, staff, secret
    ):
        assert client_for(secret=secret).get(DESIRED).status_code == 200
        assert client_for(dana).get(DESIRED).status_code == 200
        assert client_for(staff).get(DESIRED).status_code == 200
        for user in (alice, bob, charlie):
            response = client_for(user).get(DESIRED)
            assert response.status_code == 403, user
        assert client_for().get(DESIRED).status_code in (401, 403)

    def test_another_clusters_token_is_refused(self, allocation, other_secret):
        response = client_for(secret=other_secret).get(DESIRED)

        assert response.status_code == 403
        assert response.json()["detail"] == "This token belongs to another cluster."

    def test_the_api_index_still_renders(self, staff):
        response = client_for(staff).get("/api/v1/")

        assert response.status_code == 200
        assert "holds" in response.json()

    def test_an_unknown_cluster_is_404_for_an_admin(self, staff):
        response = client_for(staff).get("/api/v1/clusters/nowhere/desired-state/")

        assert response.status_code == 404


class TestSyncReports:
    def test_the_clusters_token_records_a_run(self, allocation, secret):
        response = client_for(secret=secret).post(REPORTS, report_body(), format="json")

        assert response.status_code == 201, response.json()
        report = SyncReport.objects.get()
        assert response.json()["code"] == str(report.code)
        assert (report.cluster, report.mode, report.succeeded) == (
            allocation.cluster,
            "APPLY",
            True,
        )
        assert report.drift_count == 1
        assert report.drift[0]["user"] == "bob"
        assert report.applied == report_body()["applied"]
        assert report.token.name == "slurm sync"

    def test_a_failed_run_says_why(self, allocation, secret):
        body = report_body(succeeded=False, error="command 2 of 3 failed: ...")

        response = client_for(secret=secret).post(REPORTS, body, format="json")

        assert response.status_code == 201
        assert SyncReport.objects.get().error == "command 2 of 3 failed: ..."

    @pytest.mark.parametrize(
        ("values", "field"),
        [
            ({"mode": "MAYBE"}, "mode"),
            ({"succeeded": False}, "error"),  # a failure without a reason
            ({"error": "oops"}, "error"),  # a success with one
            ({"mode": "DRY_RUN"}, "applied"),  # a dry run applies nothing
            ({"drift": [{"kind": "renamed", "account": "x"}]}, "drift"),
            ({"applied": "sacctmgr"}, "applied"),
        ],
    )
    def test_a_bad_report_is_refused_beside_its_field_and_writes_nothing(
        self, allocation, secret, values, field
    ):
        importer = client_for(secret=secret)
        importer.get(REPORTS)  # the token's first use records its last use
        with unchanged():
            response = importer.post(REPORTS, report_body(**values), format="json")

        assert response.status_code == 400
        assert field in response.json()["errors"]

    def test_only_an_importer_token_posts_reports(self, allocation, dana, staff):
        for user in (dana, staff):
            response = client_for(user).post(REPORTS, report_body(), format="json")
            assert response.status_code == 403
        assert not SyncReport.objects.exists()

    def test_another_clusters_token_cannot_post_here(self, allocation, other_secret):
        response = client_for(secret=other_secret).post(REPORTS, report_body(), format="json")

        assert response.status_code == 403
        assert not SyncReport.objects.exists()

    def test_admins_list_them_newest_first_paginated(self, allocation, secret, dana, staff):
        importer = client_for(secret=secret)
        importer.post(REPORTS, report_body(mode="DRY_RUN", applied=[]), format="json")
        importer.post(REPORTS, report_body(), format="json")

        for reader in (client_for(dana), client_for(staff), importer):
            body = reader.get(REPORTS).json()
            assert body["count"] == 2
            assert [r["mode"] for r in body["results"]] == ["APPLY", "DRY_RUN"]

    def test_members_and_outsiders_cannot_list_them(self, allocation, alice, bob, charlie):
        for user in (alice, bob, charlie):
            assert client_for(user).get(REPORTS).status_code == 403
