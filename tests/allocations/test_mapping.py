import datetime as dt
from decimal import Decimal

import pytest

from allocations.mapping import (
    MappingError,
    job_records_to_usage,
    job_usage,
    mappings_for,
    usage_records,
)
from allocations.models import Cluster, Resource, TresMapping
from allocations.parsers import JobRecord, parse_tres

START = dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)
GPU1 = Cluster(name="gpu1")
# Unsaved rows: job_usage reads only the mappings it is given. Resources need their pk,
# which is how usage of one resource is summed.
CPU = Resource(pk=1, cluster=GPU1, name="CPU", kind="CPU", unit="core")
H200 = Resource(pk=2, cluster=GPU1, name="GPU H200", kind="GPU", unit="GPU")
A100 = Resource(pk=3, cluster=GPU1, name="GPU A100", kind="GPU", unit="GPU")
MEMORY = Resource(pk=4, cluster=GPU1, name="Memory", kind="MEMORY", unit="GB")
PER_MB_IN_GB = Decimal(1) / 1024  # 0.0009765625, exact


def mapping(tres: str, resource: Resource, partition: str = "", scale="1") -> TresMapping:
    return TresMapping(
        cluster=GPU1, partition=partition, tres=tres, resource=resource, scale=Decimal(scale)
    )


def job(tres: str, *, partition="gpu", elapsed=3600, **extra) -> JobRecord:
    fields = {
        "line": 7,
        "job_id": "4801",
        "display_id": "4801",
        "user": "alice",
        "account": "chem-lab",
        "partition": partition,
        "state": "COMPLETED",
        "tres": parse_tres(tres),
        "elapsed_seconds": elapsed,
        "start": START,
        "end": START + dt.timedelta(seconds=elapsed),
        "cluster": "gpu1",
        "raw": {},
    }
    return JobRecord(**(fields | extra))


def usage(job_, mappings) -> dict[str, Decimal]:
    return {resource.name: raw for resource, raw in job_usage(job_, mappings)}


class TestJobUsage:
    def test_it_counts_typed_gpus_once(self):
        mappings = [mapping("gres/gpu:h200", H200), mapping("gres/gpu", H200)]

        result = usage(job("cpu=8,gres/gpu=2,gres/gpu:h200=2,billing=16,node=1"), mappings)

        # 2 GPUs for an hour, not 4: the untyped total names the same two GPUs.
        assert result == {"GPU H200": Decimal("7200")}

    def test_it_charges_each_gpu_model_to_its_resource(self):
        mappings = [mapping("gres/gpu:h200", H200), mapping("gres/gpu:a100", A100)]

        result = usage(job("gres/gpu=3,gres/gpu:h200=2,gres/gpu:a100=1"), mappings)

        assert result == {"GPU H200": Decimal("7200"), "GPU A100": Decimal("3600")}

    def test_the_untyped_total_maps_when_there_are_no_typed_entries(self):
        mappings = [mapping("gres/gpu:h200", H200), mapping("gres/gpu", A100)]

        assert usage(job("cpu=4,gres/gpu=4"), mappings) == {"GPU A100": Decimal("14400")}

    def test_gpus_no_typed_entry_accounts_for_go_to_the_untyped_mapping(self):
        mappings = [mapping("gres/gpu:h200", H200), mapping("gres/gpu", A100)]

        result = usage(job("gres/gpu=3,gres/gpu:h200=2"), mappings)

        assert result == {"GPU H200": Decimal("7200"), "GPU A100": Decimal("3600")}

    def test_tres_of_one_resource_are_summed(self):
        # Both models priced alike: one Usage row per job and resource.
        mappings = [mapping("gres/gpu:h200", H200), mapping("gres/gpu:a100", H200)]

        result = usage(job("gres/gpu=3,gres/gpu:h200=2,gres/gpu:a100=1"), mappings)

        assert result == {"GPU H200": Decimal("10800")}

    def test_a_partition_specific_mapping_wins(self):
        mappings = [
            mapping("cpu", CPU),
            # On the gpu partition a core is billed at a quarter of a core-hour.
            mapping("cpu", CPU, partition="gpu", scale="0.25"),
        ]

        assert usage(job("cpu=8", partition="gpu"), mappings) == {"CPU": Decimal("7200")}
        assert usage(job("cpu=8", partition="cpu"), mappings) == {"CPU": Decimal("28800")}

    def test_the_order_of_the_mappings_does_not_matter(self):
        mappings = [mapping("cpu", CPU, partition="gpu", scale="0.25"), mapping("cpu", CPU)]

        assert usage(job("cpu=8", partition="gpu"), mappings) == {"CPU": Decimal("7200")}

    def test_scale_counts_memory_in_gigabytes(self):
        mappings = [mapping("cpu", CPU), mapping("mem", MEMORY, scale=PER_MB_IN_GB)]

        result = usage(job("cpu=64,mem=1.50T", elapsed=7322), mappings)

        # 1.50T = 1,572,864 MB = 1,536 GB, for 7,322 s.
        assert result == {"CPU": Decimal("468608"), "Memory": Decimal("11246592")}

    def test_raw_amounts_keep_three_places_rounded_half_even(self):
        mappings = [mapping("mem", MEMORY, scale=PER_MB_IN_GB)]

        # 1 MB for 1 s is 0.0009765625 GB-seconds: 0.001 at three places.
        assert usage(job("mem=1M", elapsed=1), mappings) == {"Memory": Decimal("0.001")}
        # 1 MB for 2 s is 0.001953125: the half-way 5 rounds to the even 0.002.
        assert usage(job("mem=1M", elapsed=2), mappings) == {"Memory": Decimal("0.002")}

    def test_unmapped_tres_are_ignored(self):
        mappings = [mapping("cpu", CPU)]

        assert usage(job("billing=16,cpu=8,node=1,mem=32000M"), mappings) == {
            "CPU": Decimal("28800")
        }

    def test_a_job_of_zero_seconds_uses_zero(self):
        assert usage(job("cpu=128", elapsed=0), [mapping("cpu", CPU)]) == {"CPU": Decimal("0")}

    def test_a_job_none_of_whose_tres_maps_is_an_error(self):
        mappings = [mapping("cpu", CPU, partition="cpu")]

        with pytest.raises(MappingError) as excinfo:
            job_usage(job("billing=16,cpu=8,node=1", partition="gpu"), mappings)

        assert str(excinfo.value) == (
            "no TRES of job 4801 (billing, cpu, node) on partition gpu maps to a resource on "
            "cluster gpu1; configure TresMapping in the admin"
        )

    def test_zero_gpus_do_not_count_as_mapped(self):
        with pytest.raises(MappingError):
            job_usage(job("cpu=4,gres/gpu=0"), [mapping("gres/gpu", H200)])


class TestUsageRecords:
    def test_it_gives_the_records_ingest_accepts(self):
        mappings = [mapping("cpu", CPU), mapping("gres/gpu:h200", H200)]

        records = usage_records(job("cpu=8,gres/gpu=2,gres/gpu:h200=2"), mappings)

        common = {
            "job_id": "4801",
            "user": "alice",
            "allocation": "chem-lab",
            "start": "2026-03-01T08:00:00+00:00",
            "end": "2026-03-01T09:00:00+00:00",
            "charged_at": "2026-03-01T09:00:00+00:00",
        }
        assert records == [
            common | {"resource": "CPU", "raw_unit_seconds": "28800.000"},
            common | {"resource": "GPU H200", "raw_unit_seconds": "7200.000"},
        ]

    @pytest.mark.parametrize(
        ("extra", "field", "message"),
        [
            ({"cluster": "cpu2"}, "cluster", "job 4801 ran on cluster cpu2, not gpu1"),
            ({"user": ""}, "user", "job 4801 has no user"),
            ({"account": ""}, "allocation", "job 4801 has no account"),
            ({"end": None}, "end", "job 4801 has not ended"),
        ],
    )
    def test_it_refuses_a_job_no_database_could_charge(self, extra, field, message):
        with pytest.raises(MappingError) as excinfo:
            usage_records(job("cpu=8", **extra), [mapping("cpu", CPU)])

        assert (excinfo.value.field, str(excinfo.value)) == (field, message)

    def test_a_job_without_a_cluster_is_taken_as_the_mappings_cluster(self):
        # SWF traces name no cluster.
        assert usage_records(job("cpu=1", cluster=None), [mapping("cpu", CPU)])


class TestJobRecordsToUsage:
    def test_it_separates_the_records_from_the_errors_with_their_lines(self):
        jobs = [
            job("cpu=1", line=2, job_id="1"),
            job("billing=1", line=5, job_id="2"),
            job("cpu=2", line=9, job_id="3", account=""),
            job("cpu=3", line=12, job_id="4"),
        ]

        records, errors = job_records_to_usage(jobs, [mapping("cpu", CPU)])

        assert [(r["job_id"], r["raw_unit_seconds"]) for r in records] == [
            ("1", "3600.000"),
            ("4", "10800.000"),
        ]
        assert [(e["line"], e["job_id"], e["field"]) for e in errors] == [
            (5, "2", "tres"),
            (9, "3", "allocation"),
        ]
        assert errors[0]["reason"].startswith("no TRES of job 2 (billing)")


class TestMappingsFor:
    def test_it_loads_a_clusters_mappings_with_their_resources_in_one_query(
        self, cluster, gpu, cpu, django_assert_num_queries
    ):
        TresMapping.objects.create(cluster=cluster, tres="cpu", resource=cpu)
        TresMapping.objects.create(cluster=cluster, tres="gres/gpu:h200", resource=gpu)
        other = Cluster.objects.create(name="cpu2")
        TresMapping.objects.create(
            cluster=other,
            tres="cpu",
            resource=Resource.objects.create(cluster=other, name="CPU", kind="CPU", unit="core"),
        )

        with django_assert_num_queries(1):
            mappings = mappings_for(cluster)
            names = [(m.tres, m.resource.name, m.cluster.name) for m in mappings]

        assert names == [("cpu", "CPU", "gpu1"), ("gres/gpu:h200", "GPU H200", "gpu1")]
