import csv
import datetime as dt
import io

from allocations import services
from allocations.adjustments import usage_refund
from tests.conftest import usage
from tests.portal_pages.conftest import client_as


def record_jobs(allocation, alice, bob, gpu, cpu):
    services.usage_record_batch(
        cluster=allocation.cluster,
        records=[
            usage(allocation, alice, gpu, "a-gpu", 1, when=dt.datetime(2026, 2, 1, tzinfo=dt.UTC)),
            usage(allocation, bob, cpu, "b-cpu", 100, when=dt.datetime(2026, 3, 1, tzinfo=dt.UTC)),
            usage(allocation, bob, gpu, "b-gpu", 2, when=dt.datetime(2026, 4, 1, tzinfo=dt.UTC)),
        ],
    )


class TestJobs:
    def url(self, allocation, query=""):
        return f"/allocations/{allocation.code}/jobs/{query}"

    def test_the_pi_sees_everyones_jobs_and_filters_them(self, allocation, alice, bob, gpu, cpu):
        record_jobs(allocation, alice, bob, gpu, cpu)
        client = client_as(alice)
        body = client.get(self.url(allocation)).content.decode()
        assert all(job in body for job in ("a-gpu", "b-cpu", "b-gpu"))
        body = client.get(self.url(allocation, "?user=bob")).content.decode()
        assert "a-gpu" not in body and "b-cpu" in body
        body = client.get(self.url(allocation, f"?resource={gpu.code}")).content.decode()
        assert "b-cpu" not in body and "b-gpu" in body

    def test_a_date_range_includes_its_last_day(self, allocation, alice, bob, gpu, cpu):
        record_jobs(allocation, alice, bob, gpu, cpu)
        body = (
            client_as(alice)
            .get(self.url(allocation, "?date_from=2026-02-15&date_to=2026-03-01"))
            .content.decode()
        )
        assert "b-cpu" in body
        assert "a-gpu" not in body and "b-gpu" not in body

    def test_a_bad_range_is_reported_beside_the_field(self, allocation, alice):
        response = client_as(alice).get(
            self.url(allocation, "?date_from=2026-05-01&date_to=2026-04-01")
        )
        assert response.status_code == 200
        assert "before its start" in response.content.decode()

    def test_a_member_sees_only_their_own_jobs_even_when_asking_for_others(
        self, allocation, alice, bob, gpu, cpu
    ):
        record_jobs(allocation, alice, bob, gpu, cpu)
        body = client_as(bob).get(self.url(allocation, "?user=alice")).content.decode()
        assert "a-gpu" not in body
        assert "b-cpu" in body

    def test_csv_export_follows_the_filters(self, allocation, alice, bob, gpu, cpu):
        record_jobs(allocation, alice, bob, gpu, cpu)
        response = client_as(alice).get(self.url(allocation, "?user=bob&export=csv"))
        assert response["Content-Type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
        assert sorted(r["job_id"] for r in rows) == ["b-cpu", "b-gpu"]
        gpu_row = next(r for r in rows if r["job_id"] == "b-gpu")
        assert (gpu_row["su_charged"], gpu_row["su_net"]) == ("4.0000", "4.0000")

    def test_refunds_show_in_the_net_charge(self, allocation, alice, bob, dana, gpu, cpu):
        record_jobs(allocation, alice, bob, gpu, cpu)
        usage_refund(actor=dana, cluster=allocation.cluster, job_id="b-gpu", reason="Node failure")
        response = client_as(alice).get(self.url(allocation, "?export=csv"))
        rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
        refunded = next(r for r in rows if r["job_id"] == "b-gpu")
        assert (refunded["su_charged"], refunded["su_net"]) == ("4.0000", "0.0000")

    def test_the_csv_export_of_a_member_holds_only_their_jobs(
        self, allocation, alice, bob, gpu, cpu
    ):
        record_jobs(allocation, alice, bob, gpu, cpu)
        response = client_as(bob).get(self.url(allocation, "?export=csv"))
        body = b"".join(response.streaming_content).decode()
        assert "a-gpu" not in body and "b-gpu" in body

    def test_an_outsider_cannot_export(self, allocation, charlie):
        assert client_as(charlie).get(self.url(allocation, "?export=csv")).status_code == 404
