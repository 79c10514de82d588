"""Standard Workload Format logs: parse_swf. No database; reads only the copied samples.

The samples are real logs of the Parallel Workloads Archive (see samples/README.md):
D. G. Feitelson, D. Tsafrir and D. Krakov, "Experience with using the Parallel Workloads
Archive", J. Parallel & Distributed Computing 74(10):2967-2982, Oct 2014.
"""

import datetime as dt
import itertools
from decimal import Decimal
from pathlib import Path

import pytest

from allocations.parsers import JobRecord, ParseError, collect, open_text, parse_swf

SAMPLES = Path(__file__).parent / "samples"
D = Decimal
HEADER = ["; Version: 2.2\n", "; UnixStartTime: 781275672\n", "; TimeZoneString: US/Mountain\n"]
ORIGIN = dt.datetime(1994, 10, 4, 13, 1, 12, tzinfo=dt.UTC)  # 781275672: 07:01:12 MDT


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def read(name: str):
    with open_text(SAMPLES / name) as lines:
        return collect(parse_swf(lines))


@pytest.fixture(scope="module")
def nasa():
    return read("nasa-head.swf")


@pytest.fixture(scope="module")
def lanl():
    return read("lanl-excerpt.swf")


def job(fields: str) -> list[str]:
    return [*HEADER, fields + "\n"]


class TestParseSwfNasa:
    def test_it_reads_every_job(self, nasa):
        assert nasa.errors == []
        assert len(nasa.records) == 218
        assert nasa.records[0].line == 33  # after the 32-line header

    def test_it_maps_a_job(self, nasa):
        record = nasa.records[0]

        assert record == JobRecord(
            line=33,
            job_id="1",
            display_id="1",
            user="u1",
            account="g1",
            partition="",  # queue -1: unknown
            state="UNKNOWN",  # status -1
            tres={"cpu": D(128)},
            elapsed_seconds=1451,
            start=utc("1993-10-01T07:00:03"),
            end=utc("1993-10-01T07:24:14"),
            cluster=None,
            raw=record.raw,
        )
        assert record.raw["run_time"] == "1451"
        assert len(record.raw) == 18

    def test_its_first_job_starts_when_the_header_says_the_log_does(self, nasa):
        # "; StartTime: Fri Oct 01 00:00:03 PDT 1993", "; TimeZoneString: US/Pacific"
        from zoneinfo import ZoneInfo

        local = nasa.records[0].start.astimezone(ZoneInfo("US/Pacific"))

        assert local.replace(tzinfo=None) == dt.datetime(1993, 10, 1, 0, 0, 3)
        assert local.tzname() == "PDT"

    def test_a_wait_of_minus_one_means_submit_is_start(self, nasa):
        record = next(r for r in nasa.records if r.job_id == "57")  # submit 25574, wait -1

        assert record.raw["wait_time"] == "-1"
        assert record.start == utc("1993-10-01T07:00:03") + dt.timedelta(seconds=25574)

    def test_a_run_time_of_zero_is_a_zero_charge(self, nasa):
        zero = [r for r in nasa.records if r.elapsed_seconds == 0]

        assert [(r.line, r.job_id) for r in zero] == [(248, "658"), (249, "659"), (250, "669")]
        assert all(r.end == r.start for r in zero)
        assert zero[0].tres == {"cpu": D(128)}

    def test_every_job_ends_its_run_time_after_it_starts(self, nasa):
        for record in nasa.records:
            assert record.end - record.start == dt.timedelta(seconds=record.elapsed_seconds)

    def test_the_sample_carries_its_attribution(self):
        header = (SAMPLES / "nasa-head.swf").read_text().splitlines()[:10]

        assert "; Acknowledge: Bill Nitzberg" in header
        assert any("Dror Feitelson" in line for line in header)


class TestParseSwfLanl:
    def test_it_refuses_jobs_without_processors_naming_their_lines(self, lanl):
        assert [(e.line, e.reason) for e in lanl.errors] == [
            (79, "job 90304: allocated processors -1: nothing to charge"),
            (80, "job 90305: allocated processors -1: nothing to charge"),
            (81, "job 90306: allocated processors -1: nothing to charge"),
        ]
        assert str(lanl.errors[0]).startswith("line 79: ")

    def test_it_reads_the_other_jobs(self, lanl):
        assert len(lanl.records) == 53
        assert lanl.records[0].start == ORIGIN  # job 1: submit 0, wait 0

    def test_an_unknown_group_or_queue_is_empty(self, lanl):
        by_id = {r.job_id: r for r in lanl.records}

        assert (by_id["138008"].account, by_id["138008"].partition) == ("", "q6")
        assert (by_id["90308"].account, by_id["90308"].partition) == ("g66", "")
        assert (by_id["2"].user, by_id["2"].account, by_id["2"].partition) == ("u3", "g3", "q1")

    def test_it_keeps_fractional_cpu_times_in_the_raw_fields(self, lanl):
        record = next(r for r in lanl.records if r.job_id == "2")

        assert record.raw["average_cpu_time"] == "489.00"

    def test_it_maps_statuses_to_states(self, lanl):
        states = {r.job_id: r.state for r in lanl.records}

        assert (states["1"], states["6"]) == ("COMPLETED", "FAILED")

    def test_it_charges_a_zero_run_time(self, lanl):
        record = next(r for r in lanl.records if r.job_id == "6305")

        assert (record.line, record.elapsed_seconds, record.end) == (71, 0, record.start)


class TestParseSwfLines:
    def test_a_negative_wait_counts_as_no_wait(self):
        [record] = parse_swf(job("7 100 -5 60 32 -1 -1 32 60 -1 1 3 3 1 1 -1 -1 -1"))

        assert record.start == ORIGIN + dt.timedelta(seconds=100)
        assert record.end - record.start == dt.timedelta(seconds=60)

    def test_a_wait_moves_the_start(self):
        [record] = parse_swf(job("7 100 20 60 32 -1 -1 32 60 -1 1 3 3 1 1 -1 -1 -1"))

        assert record.start == ORIGIN + dt.timedelta(seconds=120)

    @pytest.mark.parametrize(
        ("fields", "says"),
        [
            ("7 100 0 -1 32 -1 -1 32 60 -1 1 3 3 1 1 -1 -1 -1", "run time -1: nothing to charge"),
            ("7 100 0 60 0 -1 -1 32 60 -1 1 3 3 1 1 -1 -1 -1", "allocated processors 0"),
            ("7 -1 0 60 32 -1 -1 32 60 -1 1 3 3 1 1 -1 -1 -1", "unknown submit time"),
            ("7 100 0 60 32 -1 -1 32 60 -1 1 -1 3 1 1 -1 -1 -1", "unknown user"),
            ("7 100 0 60 32 -1 -1 32 60 -1 1 3 3 1 1 -1 -1", "17 fields, an SWF job has 18"),
            ("7 100 0 6.5 32 -1 -1 32 60 -1 1 3 3 1 1 -1 -1 -1", "run_time '6.5' is not an"),
            ("7 100 0 60 32 -1 -1 32 60 -1 1 3 3 1 1_0 -1 -1 -1", "queue_number '1_0' is not"),
        ],
    )
    def test_it_names_the_line_and_the_reason(self, fields, says):
        [error] = parse_swf(job(fields))

        assert isinstance(error, ParseError)
        assert error.line == 4
        assert says in str(error)

    def test_one_bad_line_does_not_stop_the_rest(self):
        lines = [*HEADER, "junk\n", "8 0 0 10 1 -1 -1 1 10 -1 1 2 2 1 1 -1 -1 -1\n"]

        items = list(parse_swf(lines))

        assert [type(item) for item in items] == [ParseError, JobRecord]

    def test_it_reports_a_missing_start_time_once(self):
        lines = ["; Version: 2.2\n"] + ["8 0 0 10 1 -1 -1 1 10 -1 1 2 2 1 1 -1 -1 -1\n"] * 5

        [error] = parse_swf(lines)

        assert error.line == 2
        assert "UnixStartTime" in str(error)

    def test_it_refuses_a_bad_start_time(self):
        lines = ["; UnixStartTime: yesterday\n", "8 0 0 10 1 -1 -1 1 10 -1 1 2 2 1 1 -1 -1 -1\n"]

        [error] = parse_swf(lines)

        assert "UnixStartTime 'yesterday' is not epoch seconds" in str(error)

    def test_it_ignores_indented_header_continuations(self):
        lines = [
            "; Information: http://www.lanl.gov/\n",
            ";              http://www.cs.huji.ac.il/labs/parallel/workload/\n",
            *HEADER,
            "\n",
            "8 0 0 10 1 -1 -1 1 10 -1 1 2 2 1 1 -1 -1 -1\n",
        ]

        [record] = parse_swf(lines)

        assert record.line == 7

    def test_it_reads_one_line_at_a_time(self):
        endless = itertools.chain(
            HEADER, itertools.repeat("8 0 0 10 1 -1 -1 1 10 -1 1 2 2 1 1 -1 -1 -1")
        )

        first = list(itertools.islice(parse_swf(endless), 3))

        assert [record.line for record in first] == [4, 5, 6]
