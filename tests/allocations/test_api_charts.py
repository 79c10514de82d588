import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.tokens import api_token_issue
from allocations import selectors, services
from allocations.charts import OTHERS
from allocations.models import UsageDaily
from allocations.rollups import rollups_refresh_all
from tests.conftest import NOW, client_for, usage

MAR1 = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _frozen_clock(monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: NOW)


@pytest.fixture
def charged(allocation, alice, bob, gpu, cpu):
    services.usage_record_batch(
        cluster=allocation.cluster,
        records=[
            usage(allocation, bob, gpu, "1", 10, MAR1),  # 20 SU
            usage(allocation, alice, gpu, "2", 5, MAR1 + dt.timedelta(days=1)),  # 10 SU
            usage(allocation, alice, cpu, "3", 100, MAR1 + dt.timedelta(days=1)),  # 1 SU
        ],
    )
    rollups_refresh_all()
    return allocation


def url(allocation, chart: str) -> str:
    return f"/api/v1/allocations/{allocation.code}/charts/{chart}/"


def names(body) -> list[str]:
    return [t["name"] for t in body["figure"]["data"]]


class TestAllocationChartAccess:
    @pytest.mark.parametrize("chart", ["burndown", "members", "resources"])
    @pytest.mark.parametrize("who", ["alice", "bob", "dana", "staff"])
    def test_whoever_sees_the_allocation_gets_its_charts(self, request, charged, chart, who):
        response = client_for(request.getfixturevalue(who)).get(url(charged, chart))

        assert response.status_code == 200, response.json()
        assert response.json()["figure"]["data"]
        assert (response.json()["start"], response.json()["end"]) == ("2026-01-01", "2026-12-31")

    @pytest.mark.parametrize("chart", ["burndown", "members", "resources"])
    def test_an_outsider_gets_404(self, charged, charlie, chart):
        assert client_for(charlie).get(url(charged, chart)).status_code == 404

    def test_an_anonymous_caller_is_refused(self, charged):
        assert client_for(None).get(url(charged, "burndown")).status_code in (401, 403)

    def test_an_importer_token_sees_its_clusters_allocations(self, charged, dana):
        issued = api_token_issue(actor=dana, cluster=charged.cluster, name="sacct")
        assert client_for(secret=issued.secret).get(url(charged, "burndown")).status_code == 200


class TestDateRange:
    def test_the_range_can_be_narrowed(self, charged, alice):
        body = client_for(alice).get(url(charged, "members") + "?start=2026-03-01&end=2026-03-01")

        assert body.status_code == 200
        assert [(t["name"], t["y"]) for t in body.json()["figure"]["data"]] == [("bob", [20.0])]

    @pytest.mark.parametrize(
        ("query", "field", "message"),
        [
            ("?start=2026-03-02&end=2026-03-01", "end", "The end (2026-03-01) is before the start"),
            ("?end=2025-06-01", "end", "The end (2025-06-01) is before the start (2026-01-01)"),
            ("?start=yesterday", "start", "Date has wrong format"),
            ("?start=2020-01-01&end=2026-01-01", "end", "Ask for at most 1098 days"),
        ],
        ids=["end-first", "end-before-default-start", "not-a-date", "too-long"],
    )
    def test_a_bad_range_is_a_400_naming_the_field(self, charged, alice, query, field, message):
        response = client_for(alice).get(url(charged, "burndown") + query)

        assert response.status_code == 400
        assert message in response.json()["errors"][field][0]


class TestCharts:
    def test_the_burndown_starts_from_the_budget_and_projects_exhaustion(self, charged, alice):
        figure = client_for(alice).get(url(charged, "burndown")).json()["figure"]

        remaining = figure["data"][0]
        assert remaining["name"] == "Remaining"
        assert remaining["y"][0] == 1000.0
        # After the Mar 1 and Mar 2 charges, and unchanged to the frozen today (Jun 15).
        assert remaining["y"][-1] == 969.0
        assert remaining["x"][-1] == "2026-06-15"
        assert names({"figure": figure}) == ["Remaining", "Ideal linear burn"] + [
            n for n in names({"figure": figure}) if n.startswith("Projected")
        ]

    def test_the_pi_sees_every_member_and_a_member_sees_themself_and_the_rest(
        self, charged, alice, bob, dana
    ):
        assert sorted(names(client_for(alice).get(url(charged, "members")).json())) == [
            "alice",
            "bob",
        ]
        assert names(client_for(bob).get(url(charged, "members")).json()) == ["bob", OTHERS]
        assert sorted(names(client_for(dana).get(url(charged, "members")).json())) == [
            "alice",
            "bob",
        ]

    def test_usage_by_resource(self, charged, bob):
        body = client_for(bob).get(url(charged, "resources")).json()
        assert {t["name"]: sum(t["y"]) for t in body["figure"]["data"]} == {
            "GPU H200": 30.0,
            "CPU": 1.0,
        }

    def test_the_forecast(self, charged, bob):
        # Charged in March, nothing in the 28 days up to Jun 15: idle, all left over.
        body = client_for(bob).get(f"/api/v1/allocations/{charged.code}/forecast/").json()

        assert body["pattern"] == "idle"
        assert (body["burn_rate"], body["exhaustion"], body["window_days"]) == ("0.0000", None, 28)
        assert body["unused_su"] == "969"
        assert "about 969 SUs will likely go unused by 2026-12-31" in body["recommendation"]

    @pytest.mark.parametrize(
        ("query", "bucket", "x", "by_member"),
        [
            # A year is drawn by week: Sunday Mar 1 is in the week of Monday Feb 23.
            ("", "week", ["2026-02-23", "2026-03-02"], {"bob": [20, 0], "alice": [0, 11]}),
            (
                "?start=2025-01-01&end=2027-12-31",
                "month",
                ["2026-03-01"],
                {"bob": [20], "alice": [11]},
            ),
            # A range from mid-week shows the days of the week that are in it.
            (
                "?start=2026-02-25&end=2026-09-30",
                "week",
                ["2026-02-23", "2026-03-02"],
                {"bob": [20, 0], "alice": [0, 11]},
            ),
            ("?start=2026-03-02&end=2026-03-31", "day", ["2026-03-02"], {"alice": [11]}),
        ],
        ids=["year-by-week", "three-years-by-month", "from-mid-week", "a-month-by-day"],
    )
    def test_the_database_sums_by_the_period_the_chart_draws(
        self, charged, alice, query, bucket, x, by_member
    ):
        figure = client_for(alice).get(url(charged, "members") + query).json()["figure"]

        assert figure["layout"]["title"]["text"].endswith(f"(per {bucket})")
        assert all(t["x"] == x for t in figure["data"])
        assert {t["name"]: t["y"] for t in figure["data"]} == by_member

    def test_sums_of_fractions_stay_exact(self, allocation, alice, cpu):
        services.usage_record_batch(
            cluster=allocation.cluster,
            records=[
                usage(allocation, alice, cpu, "f1", 10, MAR1),  # 0.1 SU
                usage(allocation, alice, cpu, "f2", 20, MAR1),  # 0.2 SU
            ],
        )
        rollups_refresh_all()

        body = client_for(alice).get(url(allocation, "resources")).json()

        assert [(t["name"], t["y"]) for t in body["figure"]["data"]] == [("CPU", [0.3])]

    def test_the_charts_read_the_rollups_not_the_usage(self, charged, alice):
        UsageDaily.objects.all().delete()
        figure = client_for(alice).get(url(charged, "burndown")).json()["figure"]
        assert figure["data"][0]["y"][-1] == 1000.0


class TestBurndownSeries:
    def test_it_reads_what_budget_diffs_and_the_daily_rollups_read(self, charged, dana):
        services.allocation_change_apply(
            actor=dana, allocation=charged, reason="Top-up", su_delta="250.5"
        )
        services.allocation_change_apply(
            actor=dana, allocation=charged, reason="Take back", su_delta="-0.25"
        )

        steps, used = selectors.burndown_series(
            allocation=charged, start=charged.start, end=charged.end
        )

        assert steps == selectors.budget_diffs(allocation=charged)
        assert [amount for _, amount in steps][-2:] == [Decimal("1250.5"), Decimal("1250.25")]
        assert used == selectors.rollup_usage_by_day(
            allocation=charged, start=charged.start, end=charged.end
        )
        assert used == [(dt.date(2026, 3, 1), Decimal(20)), (dt.date(2026, 3, 2), Decimal(11))]


class TestQueryCounts:
    @pytest.fixture
    def rollups(self, allocation, bob, gpu):
        def make(n: int):
            UsageDaily.objects.filter(allocation=allocation).delete()
            UsageDaily.objects.bulk_create(
                UsageDaily(
                    allocation=allocation,
                    user=bob,
                    resource=gpu,
                    day=dt.date(2026, 1, 1) + dt.timedelta(days=i % 365),
                    su=Decimal(1),
                    raw=Decimal(1800),
                    jobs=1,
                )
                for i in range(n)
                # One row per day: at most 365 rows per member and resource.
                if i < 365
            )

        return make

    @pytest.mark.parametrize(
        ("who", "chart", "queries"),
        [
            # session, user, the allocation (with what the viewer may see of it), and
            # the diffs with the daily usage (for the figure and the forecast's window).
            ("alice", "charts/burndown", 4),
            # session, user, allocation, the rollups by member.
            ("alice", "charts/members", 4),
            # The same for a plain member and for the cluster's admin: the allocation
            # row says what they may see, without a query of its own.
            ("bob", "charts/members", 4),
            ("dana", "charts/members", 4),
            # session, user, allocation, rollups by resource.
            ("alice", "charts/resources", 4),
            # session, user, allocation, the last 28 days' usage.
            ("alice", "forecast", 4),
        ],
    )
    def test_it_costs_the_same_for_2_or_200_rows(
        self, request, rollups, allocation, who, chart, queries, django_assert_num_queries
    ):
        client = client_for(request.getfixturevalue(who))
        for n in (2, 200):
            rollups(n)
            with django_assert_num_queries(queries):
                response = client.get(f"/api/v1/allocations/{allocation.code}/{chart}/")
            assert response.status_code == 200

    def test_the_project_overview_costs_the_same_for_1_or_3_allocations(
        self, allocation, alice, cluster, gpu, django_assert_num_queries
    ):
        client = client_for(alice)
        path = f"/api/v1/projects/{allocation.project.code}/charts/overview/"
        for name in ("", "second", "third"):
            if name:
                request = services.allocation_request_create(
                    actor=alice,
                    project=allocation.project,
                    cluster=cluster,
                    name=name,
                    resources=[gpu],
                    su_amount="10",
                    start=allocation.start,
                    end=allocation.end,
                    justification="More runs",
                )
                services.change_request_approve(actor=cluster.admins.get(), request=request)
            # session, user, the project (with whether alice manages it), its
            # allocations with their clusters.
            with django_assert_num_queries(4):
                response = client.get(path)
            assert response.status_code == 200


class TestAlertThresholds:
    def path(self, allocation):
        return f"/api/v1/allocations/{allocation.code}/alert-thresholds/"

    def test_they_default_to_the_site_setting(self, allocation, bob, settings):
        settings.ALERT_THRESHOLDS = "80, 95"
        body = client_for(bob).get(self.path(allocation)).json()
        assert body == {"alert_thresholds": [80, 95], "site_default": True}

    def test_the_pi_sets_them(self, allocation, alice):
        response = client_for(alice).put(
            self.path(allocation), {"alert_thresholds": "90, 50,50"}, format="json"
        )

        assert response.json() == {"alert_thresholds": [50, 90], "site_default": False}
        allocation.refresh_from_db()
        assert allocation.alert_thresholds == "50,90"

    def test_empty_goes_back_to_the_site_default(self, allocation, alice):
        client = client_for(alice)
        client.put(self.path(allocation), {"alert_thresholds": "50"}, format="json")
        body = client.put(self.path(allocation), {"alert_thresholds": ""}, format="json").json()
        assert body["site_default"] is True

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("0,90", "0% is out of range: use 1 to 100."),
            ("75,150", "150% is out of range: use 1 to 100."),
            ("75,ninety", "'ninety' is not a whole number"),
            ("-5", "'-5' is not a whole number"),
            (",", "Give at least one threshold"),
        ],
    )
    def test_out_of_range_values_are_a_400_beside_the_field(
        self, allocation, alice, value, message
    ):
        response = client_for(alice).put(
            self.path(allocation), {"alert_thresholds": value}, format="json"
        )

        assert response.status_code == 400
        assert response.json()["errors"]["alert_thresholds"][0].startswith(message)
        allocation.refresh_from_db()
        assert allocation.alert_thresholds == ""

    def test_the_clusters_admin_may_set_them_too(self, allocation, dana):
        response = client_for(dana).put(
            self.path(allocation), {"alert_thresholds": "95"}, format="json"
        )
        assert response.json() == {"alert_thresholds": [95], "site_default": False}

    def test_a_member_may_not_change_them(self, allocation, bob):
        response = client_for(bob).put(
            self.path(allocation), {"alert_thresholds": "50"}, format="json"
        )
        assert response.status_code == 403

    def test_an_outsider_gets_404(self, allocation, charlie):
        assert client_for(charlie).get(self.path(allocation)).status_code == 404


class TestProjectOverview:
    def test_the_pi_sees_each_allocation(self, charged, alice):
        body = (
            client_for(alice)
            .get(f"/api/v1/projects/{charged.project.code}/charts/overview/")
            .json()
        )
        used = next(t for t in body["figure"]["data"] if t["name"] == "Used")
        assert (used["y"], used["x"]) == (["folding-gpu (gpu1)"], [31.0])

    def test_an_outsider_gets_404(self, charged, charlie):
        response = client_for(charlie).get(
            f"/api/v1/projects/{charged.project.code}/charts/overview/"
        )
        assert response.status_code == 404


class TestClusterCharts:
    @pytest.mark.parametrize("chart", ["commitment", "usage", "decisions"])
    @pytest.mark.parametrize(("who", "status"), [("dana", 200), ("staff", 200), ("alice", 403)])
    def test_only_the_clusters_admins_see_them(self, request, charged, chart, who, status):
        response = client_for(request.getfixturevalue(who)).get(
            f"/api/v1/clusters/gpu1/charts/{chart}/"
        )
        assert response.status_code == status

    def test_an_unknown_cluster_is_404(self, dana, db):
        assert client_for(dana).get("/api/v1/clusters/nope/charts/usage/").status_code == 404

    def test_commitment_against_capacity(self, charged, dana):
        body = (
            client_for(dana)
            .get("/api/v1/clusters/gpu1/charts/commitment/?start=2026-03-01&end=2026-03-31")
            .json()
        )
        by_name = {t["name"]: t["y"] for t in body["figure"]["data"]}
        # 1,000 SUs over 365 days: 31 days of it in March.
        assert by_name == {"Committed": [85.0], "Used": [31.0], "Capacity": [100000.0]}

    def test_usage_by_project(self, charged, dana):
        body = (
            client_for(dana)
            .get("/api/v1/clusters/gpu1/charts/usage/?start=2026-01-01&end=2026-06-30")
            .json()
        )
        assert [(t["name"], t["x"], t["y"]) for t in body["figure"]["data"]] == [
            ("Protein folding", ["2026-03-01"], [31.0])
        ]

    def test_time_to_decision(self, charged, dana):
        body = (
            client_for(dana)
            .get("/api/v1/clusters/gpu1/charts/decisions/?start=2026-01-01&end=2026-12-31")
            .json()
        )
        assert [t["name"] for t in body["figure"]["data"]] == ["Approved"]
