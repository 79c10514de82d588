"""sacct --parsable2 output: parse_sacct. Pure parsing, no database; reads only samples/."""

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocations.parsers import (
    SACCT_FORMAT,
    JobRecord,
    ParseError,
    Skipped,
    SkipReason,
    collect,
    gpu_counts,
    open_text,
    parse_sacct,
)

SAMPLES = Path(__file__).parent / "samples"
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
HEADER = SACCT_FORMAT.replace(",", "|")


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def sample_lines(name: str) -> list[str]:
    return (SAMPLES / name).read_text().splitlines(keepends=True)


def parse(lines, **kwargs):
    return collect(parse_sacct(lines, **kwargs))


def by_id(result) -> dict[str, JobRecord]:
    return {record.job_id: record for record in result.records}


@pytest.fixture(scope="module")
def gpu1():
    with open_text(SAMPLES / "sacct-gpu1.txt") as lines:
        return parse(lines)


class TestParseSacctSample:
    def test_it_charges_each_finished_job_once(self, gpu1):
        assert sorted(by_id(gpu1)) == CHARGED
        assert len(gpu1.records) == 12

    def test_it_reads_every_field_of_a_job(self, gpu1):
        record = by_id(gpu1)["4801"]

        assert record == JobRecord(
            line=2,
            job_id="4801",
            display_id="4801",
            user="alice",
            account="chem-lab",
            partition="gpu",
            state="COMPLETED",
            tres={
                "billing": D(16),
                "cpu": D(8),
                "gres/gpu:h200": D(2),
                "gres/gpu": D(2),
                "mem": D(32000),
                "node": D(1),
            },
            elapsed_seconds=3600,
            start=utc("2026-03-01T08:00:00"),
            end=utc("2026-03-01T09:00:00"),
            cluster="gpu1",
            raw=record.raw,
        )
        assert record.raw["AllocTRES"].startswith("billing=16,cpu=8")
        assert record.raw["JobIDRaw"] == "4801"

    def test_it_skips_steps_and_charges_the_allocation_line(self, gpu1):
        steps = [s for s in gpu1.skipped if s.reason == SkipReason.STEP]

        assert len(steps) == 31
        assert {s.job_id for s in steps} >= {"4801.batch", "4801.extern", "4801.0", "4811.batch"}
        assert by_id(gpu1)["4801"].line == 2  # not one of its steps' lines 3-5

    def test_it_keeps_array_tasks_by_their_raw_job_id(self, gpu1):
        records = by_id(gpu1)

        assert {(j, records[j].display_id) for j in ("4811", "4812", "4810")} == {
            ("4811", "4810_1"),
            ("4812", "4810_2"),
            ("4810", "4810_3"),  # the last task takes the array's own id
        }
        assert records["4812"].state == "FAILED"

    def test_it_keeps_het_job_components_by_their_raw_job_id(self, gpu1):
        records = by_id(gpu1)

        assert records["4900"].display_id == "4900+0"
        assert records["4901"].display_id == "4900+1"
        assert records["4900"].partition == "cpu"
        assert gpu_counts(records["4901"].tres) == {"h200": D(1)}

    def test_it_charges_only_the_last_run_of_a_requeued_job(self, gpu1):
        records = by_id(gpu1)
        superseded = [s for s in gpu1.skipped if s.reason == SkipReason.SUPERSEDED]

        assert records["4950"].start == utc("2026-03-01T10:24:41")  # after the node failure
        assert records["4950"].state == "COMPLETED"
        assert records["4950"].line == 28
        assert records["4951"].start == utc("2026-03-01T10:42:10")  # after scontrol requeue
        assert [(s.line, s.job_id) for s in superseded] == [(25, "4950"), (31, "4951")]

    def test_it_reports_jobs_not_ended_yet_as_skipped_not_errors(self, gpu1):
        not_ended = {s.job_id: s for s in gpu1.skipped if s.reason == SkipReason.NOT_ENDED}

        assert sorted(not_ended) == ["4815", "4990", "4995"]  # pending array, running, pending
        assert not_ended["4990"].detail == "RUNNING, End Unknown"
        assert gpu1.skipped_counts[SkipReason.NOT_ENDED] == 3

    def test_it_skips_a_job_that_never_ran(self, gpu1):
        never_ran = [s for s in gpu1.skipped if s.reason == SkipReason.NEVER_RAN]

        assert [(s.line, s.job_id) for s in never_ran] == [(50, "4991")]
        assert never_ran[0].detail == "CANCELLED, no AllocTRES"

    def test_it_normalises_cancelled_by_a_user(self, gpu1):
        record = by_id(gpu1)["4960"]

        assert record.state == "CANCELLED"
        assert record.raw["State"] == "CANCELLED by 0"

    def test_it_reads_memory_in_megabytes(self, gpu1):
        records = by_id(gpu1)

        assert records["4801"].tres["mem"] == D(32000)  # 32000M
        assert records["4802"].tres["mem"] == D(1572864)  # 1.50T
        assert records["4970"].tres["mem"] == D(4000)  # 4000M

    def test_it_counts_gpus_named_twice_once(self, gpu1):
        assert gpu_counts(by_id(gpu1)["4801"].tres) == {"h200": D(2)}

    def test_it_names_the_line_with_missing_fields(self, gpu1):
        [error] = gpu1.errors

        assert error.line == 46
        assert str(error).startswith("line 46: 9 fields, the header has 11")

    def test_it_accounts_for_every_line(self, gpu1):
        data_lines = len(sample_lines("sacct-gpu1.txt")) - 1

        assert len(gpu1.records) + len(gpu1.skipped) + len(gpu1.errors) == data_lines

    def test_it_yields_jobs_in_input_order(self, gpu1):
        lines = [record.line for record in gpu1.records]

        assert lines == sorted(lines)


class TestParseSacctColumns:
    def test_it_maps_columns_by_name_whatever_their_order(self):
        result = parse(sample_lines("sacct-other-columns.txt"))

        assert result.errors == []
        assert [(r.job_id, r.display_id, r.cluster) for r in result.records] == [
            ("5120", "5120", None),  # no Cluster column
            ("5141", "5133_7", None),
        ]
        assert result.records[1].tres["gres/gpu:l40s"] == D(1)
        assert result.records[0].raw["JobName"] == "relax-step2"
        assert result.skipped_counts == {SkipReason.STEP: 4}

    @settings(max_examples=25, deadline=None)
    @given(st.permutations(range(len(SACCT_FORMAT.split(",")))))
    def test_any_column_order_gives_the_same_records(self, order):
        lines = [line.rstrip("\n").split("|") for line in sample_lines("sacct-gpu1.txt")]
        shuffled = ["|".join(f[i] for i in order if i < len(f)) + "\n" for f in lines]
        baseline = parse(sample_lines("sacct-gpu1.txt"))

        result = parse(shuffled)

        assert result.records == baseline.records
        assert result.skipped == baseline.skipped
        assert [e.line for e in result.errors] == [46]

    def test_it_accepts_parsable_output_with_a_trailing_bar(self):
        lines = [line.rstrip("\n") + "|\n" for line in sample_lines("sacct-gpu1.txt")]

        result = parse(lines)

        assert result.records == parse(sample_lines("sacct-gpu1.txt")).records

    def test_it_reports_a_missing_required_column_once(self):
        header = HEADER.replace("|AllocTRES", "")
        lines = [header, "4801|4801|gpu1|alice|chem-lab|gpu|3600|x|y|COMPLETED"] * 3

        result = parse(lines)

        assert result.records == [] and result.skipped == []
        [error] = result.errors
        assert error.line == 1
        assert "the header has no AllocTRES column" in str(error)
        assert SACCT_FORMAT in str(error)

    def test_it_refuses_output_without_a_header(self):
        result = parse(sample_lines("sacct-gpu1.txt")[1:])  # as --noheader prints it

        [error] = result.errors
        assert error.line == 1
        assert "not a sacct header" in str(error) and "--noheader" in str(error)

    def test_it_refuses_output_that_is_not_parsable2(self):
        lines = ["JobIDRaw     JobID   Cluster ...\n", "------------ ------- -------\n"]

        [error] = parse(lines).errors

        assert "--parsable2" in str(error)

    def test_it_needs_no_cluster_column(self):
        lines = [
            HEADER.replace("|Cluster", ""),
            "9|9|alice|lab|cpu|cpu=1,mem=1G|60|2026-03-01T00:00:00|2026-03-01T00:01:00|COMPLETED",
        ]

        [record] = parse(lines).records

        assert record.cluster is None

    def test_it_ignores_blank_lines(self):
        lines = ["\n", HEADER + "\n", "\n", *sample_lines("sacct-gpu1.txt")[1:3], "\n"]

        result = parse(lines)

        assert [r.line for r in result.records] == [4]  # blank lines still count
        assert result.errors == []


def one_line(row: str, **kwargs):
    return collect(parse_sacct([HEADER, row], **kwargs))


JOB = "7|7|gpu1|alice|chem-lab|cpu|{tres}|{elapsed}|{start}|{end}|{state}"


def job_line(**overrides) -> str:
    values = {
        "tres": "billing=4,cpu=4,mem=16G,node=1",
        "elapsed": "60",
        "start": "2026-03-01T12:00:00",
        "end": "2026-03-01T12:01:00",
        "state": "COMPLETED",
    }
    return JOB.format(**(values | overrides))


class TestParseSacctLines:
    @pytest.mark.parametrize(
        ("overrides", "says"),
        [
            ({"tres": "cpu=4,mem=lots"}, "TRES mem='lots' is not a non-negative number"),
            ({"elapsed": "-5"}, "ElapsedRaw '-5' is not a whole number"),
            ({"elapsed": ""}, "ElapsedRaw '' is not a whole number"),
            ({"start": "03/01 12:00:00"}, "SLURM_TIME_FORMAT=standard"),
            ({"end": "2026-02-30T12:00:00"}, "End '2026-02-30T12:00:00' is not a valid time"),
            ({"start": "None"}, "the job ended but has no Start"),
            ({"end": "2026-03-01T11:00:00"}, "is before Start"),
            ({"state": ""}, "State is empty"),
        ],
    )
    def test_it_names_the_line_and_the_reason_of_a_bad_line(self, overrides, says):
        [error] = one_line(job_line(**overrides)).errors

        assert error.line == 2
        assert says in error.reason
        assert str(error) == f"line 2: {error.reason}"

    def test_it_needs_a_user_on_the_allocation_line(self):
        [error] = one_line(job_line().replace("|alice|", "||")).errors

        assert "no User" in str(error)

    def test_one_bad_line_does_not_stop_the_rest(self):
        lines = [HEADER, job_line(tres="cpu=x"), "8|8|gpu1", job_line().replace("7|7", "9|9")]

        result = parse(lines)

        assert [e.line for e in result.errors] == [2, 3]
        assert [r.job_id for r in result.records] == ["9"]

    @pytest.mark.parametrize("state", ["RUNNING", "PENDING", "REQUEUED", "SUSPENDED"])
    def test_it_does_not_charge_a_job_in_a_not_ended_state(self, state):
        [skipped] = one_line(job_line(state=state)).skipped

        assert skipped.reason == SkipReason.NOT_ENDED
        assert skipped.detail.startswith(state)

    @pytest.mark.parametrize("end", ["Unknown", "None", ""])
    def test_it_does_not_charge_a_job_without_an_end(self, end):
        [skipped] = one_line(job_line(end=end, state="COMPLETED")).skipped

        assert skipped.reason == SkipReason.NOT_ENDED

    def test_it_charges_a_zero_length_job(self):
        [record] = one_line(job_line(elapsed="0", end="2026-03-01T12:00:00")).records

        assert record.elapsed_seconds == 0

    def test_it_reads_times_as_local_to_the_given_zone(self):
        [record] = one_line(job_line(), tz="Europe/Berlin").records

        assert record.start == utc("2026-03-01T11:00:00")  # CET is UTC+1
        assert record.end.tzinfo is dt.UTC

    def test_it_accepts_a_tzinfo(self):
        east = dt.timezone(dt.timedelta(hours=9))

        [record] = one_line(job_line(), tz=east).records

        assert record.start == utc("2026-03-01T03:00:00")

    def test_it_refuses_an_unknown_zone_when_called(self):
        with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
            parse_sacct([], tz="Mars/Olympus")

    def test_it_refuses_a_wall_time_that_a_dst_gap_skips(self):
        # 2026-03-08 02:00 -> 03:00 in New York: sacct there never prints 02:30.
        line = job_line(start="2026-03-08T02:30:00", end="2026-03-08T03:31:00")

        [error] = one_line(line, tz="America/New_York").errors

        assert error.line == 2
        assert "Start 2026-03-08T02:30:00 does not exist in America/New_York" in str(error)

    def test_it_keeps_the_same_job_id_on_two_clusters(self):
        other = job_line().replace("|gpu1|", "|cpu2|")

        result = collect(parse_sacct([HEADER, job_line(), other]))

        assert [(r.cluster, r.job_id) for r in result.records] == [("gpu1", "7"), ("cpu2", "7")]


@pytest.fixture(scope="module")
def new_york():
    result = parse(sample_lines("sacct-newyork-dst.txt"), tz="America/New_York")
    assert result.errors == []
    return by_id(result)


class TestParseSacctDst:
    """sacct in New York across 2025-11-02, when 01:00-02:00 EDT is followed by 01:00-02:00
    EST. ElapsedRaw says which reading of a repeated wall time is meant."""

    @pytest.mark.parametrize(
        ("job_id", "start", "end"),
        [
            ("7001", "2025-11-02T05:10:00", "2025-11-02T06:50:00"),  # 01:10 EDT - 01:50 EST
            ("7002", "2025-11-02T05:20:00", "2025-11-02T05:40:00"),  # a tie: the earlier one
            ("7003", "2025-11-02T04:30:00", "2025-11-02T06:30:00"),  # 00:30 EDT - 01:30 EST
            ("7004", "2025-11-02T05:45:00", "2025-11-02T06:45:00"),  # 01:45 EDT - 01:45 EST
            ("7005", "2025-11-02T07:10:00", "2025-11-02T07:40:00"),  # after the change: EST
        ],
    )
    def test_it_resolves_repeated_hours_with_elapsed_time(self, new_york, job_id, start, end):
        assert (new_york[job_id].start, new_york[job_id].end) == (utc(start), utc(end))

    def test_every_job_lasts_its_elapsed_time(self, new_york):
        for record in new_york.values():
            assert (record.end - record.start).total_seconds() == record.elapsed_seconds

    def test_it_is_deterministic(self, new_york):
        again = parse(sample_lines("sacct-newyork-dst.txt"), tz="America/New_York")

        assert by_id(again) == new_york


class TestParseSacctRequeue:
    """sacct -D lists every run of a requeued job; only the last one is charged."""

    def test_plain_and_duplicates_output_charge_the_same(self):
        with_runs = sample_lines("sacct-gpu1.txt")
        # Plain sacct prints only the last runs: drop the first runs of 4950 and 4951.
        first_runs = {25, 26, 27, 31, 32, 33}
        plain = [line for n, line in enumerate(with_runs, 1) if n not in first_runs]

        def charged(lines):
            return {(r.job_id, r.start, r.end, tuple(r.tres.items())) for r in parse(lines).records}

        assert charged(plain) == charged(with_runs)

    def test_the_order_of_runs_in_the_input_does_not_matter(self):
        lines = sample_lines("sacct-gpu1.txt")

        forward = parse(lines).records
        backward = parse(lines[:1] + lines[:0:-1]).records

        assert {r.job_id: r.start for r in backward} == {r.job_id: r.start for r in forward}

    def test_a_replay_charges_the_same_jobs(self):
        lines = sample_lines("sacct-gpu1.txt")

        assert parse(lines).records == parse(lines).records

    def test_an_earlier_run_is_not_charged_while_the_last_is_still_running(self):
        ended = job_line(state="NODE_FAIL")
        running = job_line(start="2026-03-01T12:05:00", end="Unknown", state="RUNNING")

        result = collect(parse_sacct([HEADER, ended, running]))

        assert result.records == []
        assert [(s.line, s.reason) for s in result.skipped] == [
            (2, SkipReason.SUPERSEDED),
            (3, SkipReason.NOT_ENDED),
        ]

    def test_a_job_pending_again_after_a_requeue_is_not_yet_chargeable(self):
        requeued = job_line(state="REQUEUED")
        pending = job_line(tres="", start="Unknown", end="Unknown", state="PENDING")

        result = collect(parse_sacct([HEADER, requeued, pending]))

        assert result.records == []
        assert result.skipped_counts == {SkipReason.SUPERSEDED: 1, SkipReason.NOT_ENDED: 1}

    def test_an_unreadable_last_run_outranks_earlier_runs(self):
        first = job_line(state="NODE_FAIL")
        last = job_line(start="2026-03-01T12:05:00", end="2026-03-01T13:00:00", tres="cpu=?")

        result = collect(parse_sacct([HEADER, first, last]))

        assert result.records == []
        assert [e.line for e in result.errors] == [3]
        assert [s.reason for s in result.skipped] == [SkipReason.SUPERSEDED]

    def test_runs_ending_together_keep_the_later_line(self):
        first = job_line(tres="cpu=1,mem=1G")
        second = job_line(tres="cpu=2,mem=1G")

        [record] = collect(parse_sacct([HEADER, first, second])).records

        assert record.line == 3


def test_steps_stream_before_the_input_ends():
    lines = iter([HEADER, job_line().replace("7|7", "7.batch|7.batch"), job_line()])
    items = parse_sacct(lines)

    first = next(items)

    assert first == Skipped(2, "7.batch", SkipReason.STEP)
    assert isinstance(next(items), JobRecord)


def test_errors_name_their_line_in_the_message():
    [error] = parse([HEADER, "1|2|3"]).errors

    assert isinstance(error, ParseError)
    assert (error.line, error.where) == (2, "line 2")
