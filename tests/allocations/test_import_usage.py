"""import_usage on the parser samples (tests/ingest/samples/README.md says what each holds).

Expected charges are worked out here from the samples' own numbers, not by the code under
test: units x seconds x the rate per unit-hour / 3600, rounded half-even to 4 places per
usage record. The NASA iPSC/860 trace is from the Parallel Workloads Archive
(https://www.cs.huji.ac.il/labs/parallel/workload/), courtesy of Bill Nitzberg: D. G.
Feitelson, D. Tsafrir and D. Krakov, "Experience with using the Parallel Workloads
Archive", J. Parallel & Distributed Computing 74(10):2967-2982, Oct 2014.
"""

import csv
import datetime as dt
import gzip
import io
from collections import defaultdict
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from accounts.models import User
from allocations import services
from allocations.ledger import ledger_drift
from allocations.models import Allocation, Cluster, Resource, TresMapping, Usage
from tests.conftest import END, RATE_START, START, make_user

SAMPLES = Path(__file__).parent.parent / "ingest" / "samples"
SACCT = SAMPLES / "sacct-gpu1.txt"
NASA = SAMPLES / "nasa-head.swf"

RATES = {"CPU": Decimal("0.01"), "GPU H200": Decimal("2"), "Memory": Decimal("0.001")}
# The chargeable jobs of sacct-gpu1.txt: (job, account, user, resource, units, seconds).
# Memory is mapped on the bigmem partition only, in GB (1.50T = 1,536 GB); GPUs are counted
# once although AllocTRES names them twice; 4950 and 4951 are charged for their last run.
SACCT_CHARGES = [
    ("4801", "chem-lab", "alice", "CPU", 8, 3600),
    ("4801", "chem-lab", "alice", "GPU H200", 2, 3600),
    ("4802", "phys-ml", "bob", "CPU", 64, 7322),
    ("4802", "phys-ml", "bob", "Memory", 1536, 7322),
    ("4811", "phys-ml", "bob", "CPU", 4, 1805),
    ("4812", "phys-ml", "bob", "CPU", 4, 1912),
    ("4810", "phys-ml", "bob", "CPU", 4, 1760),
    ("4900", "bio-gen", "carol", "CPU", 2, 2400),
    ("4901", "bio-gen", "carol", "CPU", 4, 2400),
    ("4901", "bio-gen", "carol", "GPU H200", 1, 2400),
    ("4950", "phys-ml", "dave", "CPU", 4, 5460),
    ("4950", "phys-ml", "dave", "GPU H200", 1, 5460),
    ("4951", "chem-lab", "alice", "CPU", 16, 3000),
    ("4960", "bio-gen", "carol", "CPU", 4, 900),
    ("4970", "phys-ml", "dave", "CPU", 2, 14400),
    ("4975", "phys-ml", "bob", "CPU", 1, 42),
]
SACCT_JOBS = len({job for job, *_ in SACCT_CHARGES})
# The lines of dave's jobs (4950's last run, 4970), and the line cut short.
DAVE_LINES = {"4950": 28, "4970": 40}
CUT_SHORT = 46
SACCT_SKIPPED = "Skipped 37 lines: never_ran 1, not_ended 3, step 31, superseded 2."
NASA_RATE = Decimal("0.5")


def su(units, seconds, rate) -> Decimal:
    return (Decimal(units) * seconds * rate / 3600).quantize(
        Decimal("0.0001"), rounding=ROUND_HALF_EVEN
    )


def expected(charges, user=None) -> dict[str, Decimal]:
    totals = defaultdict(Decimal)
    for _, account, who, resource, units, seconds in charges:
        if user is None or who == user:
            totals[account] += su(units, seconds, RATES[resource])
    return dict(totals)


def used() -> dict[str, Decimal]:
    return {a.name: a.su_used for a in Allocation.objects.all() if a.su_used}


@dataclass
class Run:
    out: str
    err: str
    error: CommandError | None


def run(*args, **options) -> Run:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("import_usage", *map(str, args), stdout=out, stderr=err, **options)
    except CommandError as exc:
        return Run(out.getvalue(), err.getvalue(), exc)
    return Run(out.getvalue(), err.getvalue(), None)


def sacct(*args, **options) -> Run:
    return run("--cluster", "gpu1", "--format", "sacct", *args, **options)


def build_site(*, alice, dana, cluster, resources, accounts, start=START, end=END):
    """A project of alice's with an ACTIVE allocation per account, its users as members."""
    project = services.project_create(actor=alice, title=f"Imports on {cluster.name}", pi=alice)
    for name, usernames in accounts.items():
        request = services.allocation_request_create(
            actor=alice,
            project=project,
            cluster=cluster,
            name=name,
            resources=resources,
            su_amount="100000",
            start=start,
            end=end,
            justification="Imported usage",
        )
        services.change_request_approve(actor=dana, request=request)
        for username in usernames:
            user = User.objects.filter(username=username).first() or make_user(username)
            services.membership_add(actor=alice, allocation=request.allocation, user=user)


@pytest.fixture
def gpu1(alice, bob, dana, cluster, gpu, cpu):
    """gpu1 as sacct-gpu1.txt sees it, without dave (the tests add him or not)."""
    memory = Resource.objects.create(cluster=cluster, name="Memory", kind="MEMORY", unit="GB")
    services.rate_add(
        actor=None, resource=memory, su_per_unit_hour=RATES["Memory"], start=RATE_START
    )
    for partition, tres, resource, scale in [
        ("", "cpu", cpu, Decimal(1)),
        ("", "gres/gpu:h200", gpu, Decimal(1)),
        ("", "gres/gpu", gpu, Decimal(1)),
        # Memory is charged on the big-memory nodes only, in GB (sacct counts MB).
        ("bigmem", "mem", memory, Decimal(1) / 1024),
    ]:
        TresMapping.objects.create(
            cluster=cluster, partition=partition, tres=tres, resource=resource, scale=scale
        )
    build_site(
        alice=alice,
        dana=dana,
        cluster=cluster,
        resources=[gpu, cpu, memory],
        accounts={"chem-lab": [], "phys-ml": ["bob"], "bio-gen": ["carol"]},
    )
    make_user("dave")
    return cluster


@pytest.fixture
def site(gpu1, alice):
    add_dave(alice)
    return gpu1


def add_dave(alice):
    services.membership_add(
        actor=alice,
        allocation=Allocation.objects.get(name="phys-ml"),
        user=User.objects.get(username="dave"),
    )


def rejects(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


class TestImportSacct:
    def test_it_charges_every_job_once_and_rejects_the_cut_short_line(self, site, tmp_path):
        result = sacct(SACCT, "--rejects", tmp_path / "rejects.csv")

        charges = sorted(
            Usage.objects.values_list(
                "job_id", "allocation__name", "user__username", "resource__name", "su_amount"
            )
        )
        assert charges == sorted(
            (job, account, user, resource, su(units, seconds, RATES[resource]))
            for job, account, user, resource, units, seconds in SACCT_CHARGES
        )
        assert used() == expected(SACCT_CHARGES)
        total = sum(expected(SACCT_CHARGES).values())
        assert (
            f"Charged {SACCT_JOBS} jobs: {len(SACCT_CHARGES)} usage records new, 0 duplicates, "
            f"0 corrected; {total} SU." in result.out
        )
        assert SACCT_SKIPPED in result.out
        assert "Rejected 1 line." in result.out
        assert f"line {CUT_SHORT}: 9 fields, the header has 11" in result.err
        assert str(result.error).startswith("1 line rejected (listed on stderr and in the")
        assert rejects(tmp_path / "rejects.csv")[0] == ["line", "job_id", "field", "reason"]
        assert [row[:3] for row in rejects(tmp_path / "rejects.csv")[1:]] == [
            [str(CUT_SHORT), "", ""]
        ]
        assert ledger_drift() == []

    def test_a_second_run_charges_nothing(self, site):
        sacct(SACCT)
        first = used()

        again = sacct(SACCT)

        assert f"{len(SACCT_CHARGES)} duplicates" in again.out
        assert "0 usage records new" in again.out
        assert "; 0 SU." in again.out
        assert used() == first
        assert Usage.objects.count() == len(SACCT_CHARGES)
        assert ledger_drift() == []

    def test_a_rejected_batch_charges_nothing_and_names_its_lines(self, gpu1, tmp_path):
        # dave is not a member of phys-ml: his two jobs spoil the one batch they are in.
        result = sacct(SACCT, "--rejects", tmp_path / "rejects.csv")

        assert Usage.objects.count() == 0
        for job, line in DAVE_LINES.items():
            assert f"line {line}: job {job}: user: dave is not a member of phys-ml" in result.err
        assert rejects(tmp_path / "rejects.csv") == [
            ["line", "job_id", "field", "reason"],
            [str(CUT_SHORT), "", "", rejects(tmp_path / "rejects.csv")[1][3]],
            ["28", "4950", "user", "dave is not a member of phys-ml"],
            ["40", "4970", "user", "dave is not a member of phys-ml"],
        ]
        others = SACCT_JOBS - len(DAVE_LINES)
        assert f"Not charged: {others} jobs in rejected batches" in result.out
        assert str(result.error).startswith(
            f"3 lines rejected (listed on stderr and in the rejects file); {others} other jobs "
            "of rejected batches were not charged."
        )
        assert ledger_drift() == []

    def test_small_batches_charge_all_but_the_rejected_jobs_and_a_rerun_the_rest(self, gpu1, alice):
        first = sacct(SACCT, "--batch-size", "1")

        without_dave = [c for c in SACCT_CHARGES if c[2] != "dave"]
        assert used() == expected(without_dave)
        assert "Rejected 3 lines." in first.out
        assert first.error is not None

        add_dave(alice)
        second = sacct(SACCT, "--batch-size", "1")

        assert used() == expected(SACCT_CHARGES)
        assert f"3 usage records new, {len(without_dave)} duplicates" in second.out
        assert "Rejected 1 line." in second.out  # the cut-short line, always
        assert ledger_drift() == []

    def test_jobs_whose_tres_do_not_map_are_rejected_by_line(self, site):
        TresMapping.objects.filter(tres="cpu").delete()

        result = sacct(SACCT, "--batch-size", "1")

        # The CPU-only jobs; the others are charged for their GPUs or memory alone.
        cpu_only = {"4811": 9, "4812": 12, "4810": 15, "4900": 19, "4951": 34, "4960": 37}
        cpu_only |= {"4970": 40, "4975": 43}
        for job, line in cpu_only.items():
            assert f"line {line}: job {job}: tres: no TRES of job {job} (" in result.err
        assert "configure TresMapping in the admin" in result.err
        assert sorted(Usage.objects.values_list("job_id", "resource__name")) == [
            ("4801", "GPU H200"),
            ("4802", "Memory"),
            ("4901", "GPU H200"),
            ("4950", "GPU H200"),
        ]
        assert "Rejected 9 lines." in result.out
        assert ledger_drift() == []

    def test_a_dry_run_writes_nothing(self, site):
        result = sacct(SACCT, "--dry-run")

        assert Usage.objects.count() == 0
        assert used() == {}
        total = sum(expected(SACCT_CHARGES).values())
        assert result.out.startswith("Dry run: nothing was written.")
        assert f"Would charge {SACCT_JOBS} jobs: {len(SACCT_CHARGES)} usage records new" in (
            result.out
        )
        assert f"{total} SU." in result.out
        assert result.error is not None  # line 46 is rejected in a dry run too
        assert ledger_drift() == []

    def test_it_reads_a_gzipped_file(self, site, tmp_path):
        gz = tmp_path / "sacct.txt.gz"
        gz.write_bytes(gzip.compress(SACCT.read_bytes()))

        sacct(gz)

        assert used() == expected(SACCT_CHARGES)

    def test_it_reads_gzip_from_stdin(self, site):
        result = sacct("-", stdin=io.BytesIO(gzip.compress(SACCT.read_bytes())))

        assert used() == expected(SACCT_CHARGES)
        assert "stdin (sacct) on cluster gpu1: 51 lines read" in result.out

    def test_a_truncated_gzip_is_a_clear_error(self, site, tmp_path):
        data = gzip.compress(SACCT.read_bytes())
        gz = tmp_path / "sacct.txt.gz"
        gz.write_bytes(data[: len(data) // 2])

        result = sacct(gz)

        assert "truncated gzip" in str(result.error)
        assert "run the complete file again" in str(result.error)
        # sacct jobs wait for the end of the file (a later line may requeue them).
        assert Usage.objects.count() == 0

    def test_times_are_read_in_the_given_zone(self, site):
        sacct(SACCT, "--tz", "Europe/Berlin")

        # sacct printed 09:00 local time, CET in March.
        charge = Usage.objects.filter(job_id="4801").first()
        assert charge.charged_at == dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)

    def test_slurmrestd_charges_the_same_jobs(self, site, tmp_path):
        result = run(
            "--cluster",
            "gpu1",
            "--format",
            "slurmrestd",
            SAMPLES / "slurmrestd-v0.0.40-jobs.json",
            "--rejects",
            tmp_path / "rejects.csv",
        )

        assert used() == expected(SACCT_CHARGES)
        # jobs[15], job 4980, lost its time and tres: the counterpart of sacct's line 46.
        assert "jobs[15]: " in result.err
        assert [row[:2] for row in rejects(tmp_path / "rejects.csv")[1:]] == [["15", ""]]
        assert str(result.error).startswith("1 line rejected")

    def test_a_terminal_gets_one_progress_line_redrawn_in_place(self, site):
        class Terminal(io.StringIO):
            def isatty(self):
                return True

        err = Terminal()
        with pytest.raises(CommandError):
            call_command(
                "import_usage",
                "--cluster",
                "gpu1",
                "--format",
                "sacct",
                str(SACCT),
                stdout=io.StringIO(),
                stderr=err,
                no_color=True,
            )

        progress = err.getvalue().split("\r\x1b[K")[-1]
        assert progress.startswith(f"51 lines read, {SACCT_JOBS} jobs charged (16 usage records")
        assert progress.endswith(" lines/s\n")
        assert "skipped 37 (never_ran 1, not_ended 3, step 31, superseded 2), 1 rejected" in (
            progress
        )

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--cluster", "nope", "--format", "sacct"], "There is no cluster named 'nope'."),
            (["--cluster", "gpu1", "--format", "swf", "--tz", "UTC"], "--tz is for sacct only"),
            (["--cluster", "gpu1", "--format", "sacct", "--tz", "Mars/Base"], "not a time zone"),
            (["--cluster", "gpu1", "--format", "sacct", "--batch-size", "0"], "from 1 to 10000"),
            (["--cluster", "gpu1", "--format", "sacct", "--batch-size", "10001"], "1 to 10000"),
        ],
    )
    def test_it_refuses_bad_arguments(self, site, args, message):
        with pytest.raises(CommandError, match=message):
            call_command("import_usage", *args, str(SACCT), stdout=io.StringIO())

    def test_a_cluster_without_mappings_is_refused_before_reading(self, site):
        TresMapping.objects.all().delete()

        result = sacct("/nonexistent")

        assert "has no TRES mappings" in str(result.error)

    def test_an_unreadable_file_is_a_clear_error(self, site, tmp_path):
        assert "cannot read" in str(sacct(tmp_path / "missing.txt").error)


def nasa_jobs() -> list[tuple[int, str, str, int, int]]:
    """(line, job, user, group, processors x seconds) of each job line, read plainly."""
    jobs = []
    for number, line in enumerate(NASA.read_text().splitlines(), start=1):
        fields = line.split()
        if fields and not line.startswith(";"):
            job, run_time, procs, user, group = (fields[i] for i in (0, 3, 4, 11, 12))
            jobs.append((number, job, f"u{user}", f"g{group}", int(procs) * int(run_time)))
    return jobs


@pytest.fixture
def ipsc(alice, dana):
    """The NASA Ames iPSC/860 as a cluster: users u<id>, accounts g<group>, 1993 rates."""
    cluster = Cluster.objects.create(name="ipsc", title="NASA Ames iPSC/860")
    cluster.admins.add(dana)
    nodes = Resource.objects.create(cluster=cluster, name="CPU", kind="CPU", unit="node")
    services.rate_add(
        actor=None,
        resource=nodes,
        su_per_unit_hour=NASA_RATE,
        start=dt.datetime(1993, 1, 1, tzinfo=dt.UTC),
    )
    TresMapping.objects.create(cluster=cluster, tres="cpu", resource=nodes)
    members = defaultdict(set)
    for _, _, user, group, _ in nasa_jobs():
        members[group].add(user)
    build_site(
        alice=alice,
        dana=dana,
        cluster=cluster,
        resources=[nodes],
        # u18 is made a user but no member: the test that needs him a member adds him.
        accounts={g: sorted(users - {"u18"}) for g, users in members.items()},
        start=dt.date(1993, 10, 1),
        end=dt.date(1993, 12, 31),
    )
    make_user("u18")
    return cluster


def swf(*args, **options) -> Run:
    return run("--cluster", "ipsc", "--format", "swf", *args, **options)


class TestImportSwf:
    def test_it_charges_the_nasa_trace_and_a_second_run_charges_nothing(
        self, ipsc, alice, tmp_path
    ):
        services.membership_add(
            actor=alice,
            allocation=Allocation.objects.get(name="g1"),
            user=User.objects.get(username="u18"),
        )
        gz = tmp_path / "nasa.swf.gz"
        gz.write_bytes(gzip.compress(NASA.read_bytes()))
        jobs = nasa_jobs()
        totals = defaultdict(Decimal)
        for _, _, _, group, node_seconds in jobs:
            totals[group] += su(node_seconds, 1, NASA_RATE)

        first = swf(gz)
        again = swf(gz)

        assert first.error is None, first.err
        assert len(jobs) == 218
        assert used() == dict(totals)
        assert "Charged 218 jobs: 218 usage records new, 0 duplicates, 0 corrected; " in (first.out)
        assert f"{sum(totals.values())} SU." in first.out
        assert "Skipped 0 lines." in first.out
        assert "Rejected 0 lines." in first.out
        assert again.error is None
        assert "0 usage records new, 218 duplicates, 0 corrected; 0 SU." in again.out
        assert Usage.objects.count() == 218
        assert used() == dict(totals)
        assert ledger_drift() == []

    def test_a_user_who_is_no_member_is_rejected_with_their_line(self, ipsc, tmp_path):
        (line, job, _, _, _) = next(j for j in nasa_jobs() if j[2] == "u18")

        result = swf(NASA, "--batch-size", "1", "--rejects", tmp_path / "rejects.csv")

        assert f"line {line}: job {job}: user: u18 is not a member of g1" in result.err
        assert rejects(tmp_path / "rejects.csv") == [
            ["line", "job_id", "field", "reason"],
            [str(line), job, "user", "u18 is not a member of g1"],
        ]
        assert Usage.objects.count() == 217
        assert str(result.error).startswith("1 line rejected")
        assert ledger_drift() == []
