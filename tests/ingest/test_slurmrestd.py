"""slurmrestd /slurmdb/v0.0.40/jobs JSON: parse_slurmrestd. No database; reads only samples/."""

import copy
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from allocations.parsers import (
    JobRecord,
    ParseError,
    SkipReason,
    collect,
    gpu_counts,
    open_text,
    parse_sacct,
    parse_slurmrestd,
)

SAMPLES = Path(__file__).parent / "samples"
SAMPLE = SAMPLES / "slurmrestd-v0.0.40-jobs.json"
D = Decimal
# The jobs of the sample that ended and ran, each once.
CHARGED = [
    "4801",
    "4802",
    "4810",
    "4811",
    "4812",
    "4900",
    "4901",
    "4950",
    "4951",
    "4960",
    "4970",
    "4975",
]


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(SAMPLE.read_text())


@pytest.fixture
def doc(document) -> dict:
    return copy.deepcopy(document)


@pytest.fixture(scope="module")
def gpu1(document):
    return collect(parse_slurmrestd(document))


def by_id(result) -> dict[str, JobRecord]:
    return {record.job_id: record for record in result.records}


def only_job(doc: dict, job_id: int) -> dict:
    """The document reduced to one job, to change it in a test."""
    doc["jobs"] = [job for job in doc["jobs"] if job["job_id"] == job_id][:1]
    return doc


class TestParseSlurmrestdSample:
    def test_it_charges_each_finished_job_once(self, gpu1):
        assert sorted(by_id(gpu1)) == CHARGED

    def test_it_reads_every_field_of_a_job(self, gpu1, document):
        record = by_id(gpu1)["4801"]

        assert record == JobRecord(
            line=0,
            job_id="4801",
            display_id="4801",
            user="alice",
            account="chem-lab",
            partition="gpu",
            state="COMPLETED",
            tres={
                "billing": D(16),
                "cpu": D(8),
                "gres/gpu": D(2),
                "gres/gpu:h200": D(2),
                "mem": D(32000),
                "node": D(1),
            },
            elapsed_seconds=3600,
            start=utc("2026-03-01T08:00:00"),
            end=utc("2026-03-01T09:00:00"),
            cluster="gpu1",
            raw=document["jobs"][0],
        )

    def test_it_builds_array_and_het_ids(self, gpu1):
        records = by_id(gpu1)

        assert [records[j].display_id for j in ("4811", "4812", "4810")] == [
            "4810_1",
            "4810_2",
            "4810_3",
        ]
        assert [records[j].display_id for j in ("4900", "4901")] == ["4900+0", "4900+1"]

    def test_it_charges_the_last_run_of_a_requeued_job(self, gpu1):
        superseded = [(s.line, s.job_id) for s in gpu1.skipped if s.reason == "superseded"]

        assert by_id(gpu1)["4950"].start == utc("2026-03-01T10:24:41")
        assert by_id(gpu1)["4951"].start == utc("2026-03-01T10:42:10")
        assert superseded == [(8, "4950"), (10, "4951")]

    def test_it_skips_what_is_not_chargeable(self, gpu1):
        skipped = {(s.job_id, s.reason) for s in gpu1.skipped if s.reason != "superseded"}

        assert skipped == {
            ("4815", SkipReason.NOT_ENDED),  # pending array tasks
            ("4990", SkipReason.NOT_ENDED),  # running
            ("4995", SkipReason.NOT_ENDED),  # pending
            ("4991", SkipReason.NEVER_RAN),  # cancelled while pending
        }

    def test_it_reads_a_job_cancelled_by_root(self, gpu1):
        record = by_id(gpu1)["4960"]

        assert record.state == "CANCELLED"
        assert record.raw["kill_request_user"] == "root"

    def test_it_reads_memory_in_megabytes_and_gpus_once(self, gpu1):
        records = by_id(gpu1)

        assert records["4802"].tres["mem"] == D(1572864)  # what sacct prints as 1.50T
        assert gpu_counts(records["4801"].tres) == {"h200": D(2)}

    def test_it_names_the_index_of_a_broken_job(self, gpu1):
        [error] = gpu1.errors

        assert (error.line, error.where) == (15, "jobs[15]")
        assert str(error) == 'jobs[15]: no "time" object'

    def test_it_agrees_with_sacct_on_the_same_jobs(self, gpu1):
        def comparable(records):
            fields = ("display_id", "user", "account", "partition", "state", "tres")
            fields += ("elapsed_seconds", "start", "end", "cluster")
            return {r.job_id: tuple(getattr(r, name) for name in fields) for r in records}

        with open_text(SAMPLES / "sacct-gpu1.txt") as lines:
            sacct = collect(parse_sacct(lines))

        assert comparable(gpu1.records) == comparable(sacct.records)
        # slurmrestd nests steps inside their job: only sacct reports them as skipped.
        assert gpu1.skipped_counts == {k: n for k, n in sacct.skipped_counts.items() if k != "step"}

    def test_it_reads_text_and_bytes(self, gpu1):
        text = SAMPLE.read_text()

        assert collect(parse_slurmrestd(text)).records == gpu1.records
        assert collect(parse_slurmrestd(text.encode())).records == gpu1.records


class TestParseSlurmrestdVersions:
    def test_it_reads_numbers_written_as_objects(self, doc):
        job = only_job(doc, 4801)["jobs"][0]
        plain = collect(parse_slurmrestd(copy.deepcopy(doc))).records
        for name in ("start", "end", "elapsed"):
            job["time"][name] = {"set": True, "infinite": False, "number": job["time"][name]}
        job["tres"]["allocated"][0]["count"] = {"set": True, "infinite": False, "number": 16}

        assert collect(parse_slurmrestd(doc)).records == [
            JobRecord(**(vars_of(plain[0]) | {"raw": job}))
        ]

    def test_it_reads_a_state_written_as_text(self, doc):
        job = only_job(doc, 4801)["jobs"][0]
        job["state"]["current"] = "COMPLETED"  # v0.0.39 and before

        [record] = collect(parse_slurmrestd(doc)).records

        assert record.state == "COMPLETED"

    def test_it_takes_the_base_state_among_flags(self, doc):
        job = only_job(doc, 4801)["jobs"][0]
        job["state"]["current"] = ["COMPLETING", "TIMEOUT"]

        [record] = collect(parse_slurmrestd(doc)).records

        assert record.state == "TIMEOUT"

    def test_it_does_not_charge_a_run_flagged_requeued(self, doc):
        job = only_job(doc, 4801)["jobs"][0]
        job["state"]["current"] = ["PENDING", "REQUEUED"]

        [skipped] = collect(parse_slurmrestd(doc)).skipped

        assert skipped.reason == SkipReason.NOT_ENDED

    def test_it_computes_elapsed_when_it_is_missing(self, doc):
        job = only_job(doc, 4802)["jobs"][0]
        del job["time"]["elapsed"]

        [record] = collect(parse_slurmrestd(doc)).records

        assert record.elapsed_seconds == 7322

    def test_an_unset_array_task_means_no_array(self, doc):
        job = only_job(doc, 4811)["jobs"][0]
        job["array"]["task_id"] = {"set": False, "infinite": False, "number": 0}

        [record] = collect(parse_slurmrestd(doc)).records

        assert record.display_id == "4811"


def vars_of(record: JobRecord) -> dict:
    return {name: getattr(record, name) for name in JobRecord.__dataclass_fields__}


class TestParseSlurmrestdErrors:
    def test_it_reports_errors_slurmrestd_returned(self, doc):
        doc["errors"] = [{"description": "Unable to query jobs", "error_number": 1007}]

        result = collect(parse_slurmrestd(doc))

        assert str(result.errors[0]) == "errors[0]: slurmrestd reported: Unable to query jobs"
        assert len(result.records) == 12  # the jobs that did come are still read

    @pytest.mark.parametrize(
        ("data", "says"),
        [
            ("{not json", "document: not JSON"),
            ("[]", 'document: no "jobs" list'),
            ({"jobs": {}}, 'document: no "jobs" list'),
            ({"meta": {}}, 'document: no "jobs" list'),
        ],
    )
    def test_it_reports_a_document_it_cannot_read_once(self, data, says):
        [error] = list(parse_slurmrestd(data))

        assert str(error).startswith(says)

    @pytest.mark.parametrize(
        ("change", "says"),
        [
            (lambda job: job.pop("job_id"), "no job_id"),
            (lambda job: job.pop("user"), "no user"),
            (lambda job: job.update(account=7), "account is not text"),
            (lambda job: job["time"].update(start=0), "the job ended but has no time.start"),
            (lambda job: job["time"].update(start=1772359201), "time.end is before time.start"),
            (lambda job: job["time"].update(end=-1), "time.end is not a non-negative integer"),
            (lambda job: job["time"].update(end="soon"), "time.end is not a non-negative"),
            (lambda job: job["time"].update(end=True), "time.end is not a non-negative"),
            (
                lambda job: job["time"].update(end={"set": True, "infinite": True, "number": 0}),
                "time.end is infinite",
            ),
            (lambda job: job.update(state={"current": []}), "state.current is not a list"),
            (lambda job: job["tres"].update(allocated={"cpu": 8}), "not a list"),
            (lambda job: job["tres"]["allocated"][0].pop("type"), "has no type"),
            (lambda job: job["tres"]["allocated"][1].pop("count"), "TRES cpu has no count"),
            (
                lambda job: job["tres"]["allocated"].append(job["tres"]["allocated"][0]),
                "TRES billing appears twice",
            ),
        ],
    )
    def test_it_names_the_job_and_the_reason(self, doc, change, says):
        job = only_job(doc, 4801)["jobs"][0]
        doc["jobs"].insert(0, copy.deepcopy(doc["jobs"][0]) | {"job_id": 9999})
        change(job)

        result = collect(parse_slurmrestd(doc))

        [error] = result.errors
        assert error.line == 1 and error.where == "jobs[1]"
        assert says in str(error)
        assert [r.job_id for r in result.records] == ["9999"]  # the other job is still read

    def test_a_job_that_is_not_an_object_is_an_error(self, doc):
        doc["jobs"] = ["4801"]

        [error] = collect(parse_slurmrestd(doc)).errors

        assert str(error) == "jobs[0]: a job is an object, not str"

    def test_errors_are_parse_errors(self):
        [error] = list(parse_slurmrestd("nope"))

        assert isinstance(error, ParseError)
