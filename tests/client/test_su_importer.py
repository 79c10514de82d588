"""client/su_importer.py end to end: the client runs as a subprocess, as it does beside Slurm,
with a fake sacct on PATH (tests/client/fake_sacct) and the real API behind live_server."""

import json
import os
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from accounts.tokens import api_token_issue, api_token_revoke
from allocations.ledger import ledger_drift
from allocations.models import Cluster, Usage

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "client" / "su_importer.py"
FAKE_SACCT = Path(__file__).resolve().parent / "fake_sacct"
RESOURCE_MAP = "cpu=CPU,gres/gpu:h200=GPU H200"

HEADER = "JobIDRaw|JobID|Cluster|User|Account|Partition|AllocTRES|ElapsedRaw|Start|End|State"
GPU_JOB = (
    "1001|1001|gpu1|alice|folding-gpu|gpu|billing=16,cpu=8,gres/gpu:h200=2,gres/gpu=2,"
    "mem=32000M,node=1|3600|2026-03-01T08:00:00|2026-03-01T09:00:00|COMPLETED"
)
SACCT_OUTPUT = [
    HEADER,
    GPU_JOB,
    "1001.batch|1001.batch|gpu1||folding-gpu||cpu=8,gres/gpu:h200=2,gres/gpu=2,mem=32000M"
    "|3600|2026-03-01T08:00:00|2026-03-01T09:00:00|COMPLETED",
    "1002|1002|gpu1|bob|folding-gpu|gpu|cpu=4,mem=8G,node=1|1800|2026-03-01T10:00:00"
    "|2026-03-01T10:30:00|FAILED",
    "1003|1003|gpu1|bob|folding-gpu|gpu|cpu=4,node=1|600|2026-03-01T11:00:00|Unknown|RUNNING",
]
# 1001: 2 GPUs (named twice, counted once) x 1 h x 2 SU + 8 cores x 1 h x 0.01 SU = 4.08;
# 1002: 4 cores x 0.5 h x 0.01 SU = 0.02.
SACCT_SU = Decimal("4.1")
UNKNOWN_USER_LINE = 6
UNKNOWN_USER_JOB = (
    "1004|1004|gpu1|zed|folding-gpu|gpu|cpu=2,node=1|3600|2026-03-01T12:00:00"
    "|2026-03-01T13:00:00|COMPLETED"
)
FIRST_UNTIL = "2026-03-02T00:00:00Z"


@pytest.fixture
def site(tmp_path):
    """A Slurm host's files: token, state, the fake sacct's output and its argv log, PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").symlink_to(FAKE_SACCT)
    output = tmp_path / "sacct.txt"
    output.write_text("\n".join(SACCT_OUTPUT) + "\n")
    return {
        "dir": tmp_path,
        "token": tmp_path / "token",
        "state": tmp_path / "state" / "state.json",
        "output": output,
        "calls": tmp_path / "sacct-calls.jsonl",
        # fake_sacct runs with `env python3`: the interpreter running the tests comes first.
        "env": {
            **os.environ,
            "PATH": os.pathsep.join(
                [str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
            ),
            "FAKE_SACCT_OUTPUT": str(output),
            "FAKE_SACCT_ARGV": str(tmp_path / "sacct-calls.jsonl"),
        },
    }


def run_client(site, portal, *extra, env=None):
    args = [
        sys.executable,
        str(CLIENT),
        "--portal",
        portal,
        "--cluster",
        "gpu1",
        "--token-file",
        str(site["token"]),
        "--state-file",
        str(site["state"]),
        "--resource-map",
        RESOURCE_MAP,
        "--retries",
        "3",
        "--backoff",
        "0.01",
        "--timeout",
        "20",
        *extra,
    ]
    return subprocess.run(  # noqa: S603 (the client under test, a fixed argument list)
        args,
        env={**site["env"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sacct_calls(site):
    return [json.loads(line) for line in site["calls"].read_text().splitlines()]


def mark(site):
    return json.loads(site["state"].read_text())["high_water_mark"]


@pytest.fixture
def issued(dana, cluster, site):
    token = api_token_issue(actor=dana, cluster=cluster, name="sacct importer")
    site["token"].write_text(token.secret + "\n")
    return token


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db(transaction=True)
class TestAgainstThePortal:
    def test_a_first_run_charges_the_jobs_and_writes_the_mark(
        self, live_server, allocation, issued, site
    ):
        done = run_client(
            site, live_server.url, "--since", "2026-03-01T00:00:00Z", "--until", FIRST_UNTIL
        )

        assert done.returncode == 0, done.stderr
        assert "created 3, duplicates 0, corrected 0, 4.1000 SUs charged" in done.stdout
        assert issued.secret not in done.stdout + done.stderr
        allocation.refresh_from_db()
        assert allocation.su_used == SACCT_SU
        assert sorted(Usage.objects.values_list("job_id", "resource__name")) == [
            ("1001", "CPU"),
            ("1001", "GPU H200"),
            ("1002", "CPU"),
        ]
        assert ledger_drift() == []
        assert mark(site) == FIRST_UNTIL
        [call] = sacct_calls(site)
        argv = call["argv"]
        # The mark minus the default hour of overlap, in UTC, to --until.
        assert argv[argv.index("--starttime") + 1] == "2026-02-28T23:00:00"
        assert argv[argv.index("--endtime") + 1] == "2026-03-02T00:00:00"
        assert "--allusers" in argv and "--parsable2" in argv
        assert "--state=CD,F,TO,CA,NF,PR,OOM" in argv
        assert f"--format={HEADER.replace('|', ',')}" in argv
        assert call["tz"] == "UTC"

    def test_an_overlapping_second_run_charges_nothing_and_advances_the_mark(
        self, live_server, allocation, issued, site
    ):
        first = run_client(
            site, live_server.url, "--since", "2026-03-01T00:00:00Z", "--until", FIRST_UNTIL
        )
        assert first.returncode == 0, first.stderr

        # sacct lists the same jobs again (the overlap); --since is ignored once there is a mark.
        again = run_client(
            site,
            live_server.url,
            "--since",
            "2020-01-01T00:00:00Z",
            "--until",
            "2026-03-03T00:00:00Z",
            "--overlap",
            "600",
        )

        assert again.returncode == 0, again.stderr
        assert "created 0, duplicates 3, corrected 0, 0.0000 SUs charged" in again.stdout
        allocation.refresh_from_db()
        assert allocation.su_used == SACCT_SU
        assert mark(site) == "2026-03-03T00:00:00Z"
        argv = sacct_calls(site)[1]["argv"]
        assert argv[argv.index("--starttime") + 1] == "2026-03-01T23:50:00"
        assert argv[argv.index("--endtime") + 1] == "2026-03-03T00:00:00"

    def test_a_rejected_batch_names_the_line_and_keeps_the_mark(
        self, live_server, allocation, issued, site
    ):
        site["output"].write_text("\n".join([*SACCT_OUTPUT, UNKNOWN_USER_JOB]) + "\n")
        site["state"].parent.mkdir()
        site["state"].write_text(json.dumps({"high_water_mark": "2026-03-01T00:00:00Z"}))

        done = run_client(site, live_server.url, "--until", FIRST_UNTIL)

        assert done.returncode == 2, done.stderr
        assert f"line {UNKNOWN_USER_LINE}: job 1004: user: unknown user 'zed'" in done.stderr
        assert mark(site) == "2026-03-01T00:00:00Z"
        allocation.refresh_from_db()
        assert allocation.su_used == 0
        assert not Usage.objects.exists()

    def test_batches_are_posted_separately_and_a_rejection_spares_the_others(
        self, live_server, allocation, issued, site
    ):
        site["output"].write_text("\n".join([*SACCT_OUTPUT, UNKNOWN_USER_JOB]) + "\n")

        done = run_client(
            site,
            live_server.url,
            "--since",
            "2026-03-01T00:00:00Z",
            "--until",
            FIRST_UNTIL,
            "--batch-size",
            "3",
        )

        # Batch 1 (jobs 1001, 1002) is charged; batch 2 (job 1004) is rejected.
        assert done.returncode == 2
        assert "batch 2 of 2 rejected" in done.stderr
        assert f"line {UNKNOWN_USER_LINE}: job 1004" in done.stderr
        assert "created 3, duplicates 0" in done.stdout
        assert not site["state"].exists()

    def test_a_revoked_token_is_refused_with_a_clear_message(
        self, live_server, allocation, dana, issued, site
    ):
        api_token_revoke(actor=dana, token=issued.token)

        done = run_client(site, live_server.url, "--since", "2026-03-01T00:00:00Z")

        assert done.returncode == 3
        assert "refused the token (HTTP 401: Unknown or revoked token.)" in done.stderr
        assert issued.secret not in done.stdout + done.stderr
        assert not site["state"].exists()
        assert not Usage.objects.exists()

    def test_another_clusters_token_is_refused(self, live_server, allocation, dana, site):
        other = Cluster.objects.create(name="cpu2", title="CPU cluster", su_capacity_per_month=1)
        other.admins.add(dana)
        site["token"].write_text(api_token_issue(actor=dana, cluster=other, name="x").secret)

        done = run_client(site, live_server.url, "--since", "2026-03-01T00:00:00Z")

        assert done.returncode == 3
        assert "HTTP 403: This token belongs to another cluster." in done.stderr
        assert not site["state"].exists()


class TestWithoutThePortal:
    def test_an_unreachable_portal_fails_after_the_bounded_retries(self, site):
        site["token"].write_text("ap_secret_not_used")
        portal = f"http://127.0.0.1:{closed_port()}"

        done = run_client(site, portal, "--since", "2026-03-01T00:00:00Z")

        assert done.returncode == 4
        assert done.stderr.count("retrying in") == 2
        assert "gave up after 3 attempts" in done.stderr
        assert "cannot reach" in done.stderr
        assert not site["state"].exists()

    def test_a_failing_sacct_is_reported_with_its_stderr(self, site):
        site["token"].write_text("ap_secret_not_used")
        message = "sacct: error: Problem talking to the database: Connection refused"

        done = run_client(
            site,
            "http://127.0.0.1:9",
            "--since",
            "2026-03-01T00:00:00Z",
            env={"FAKE_SACCT_FAIL": message},
        )

        assert done.returncode == 1
        assert f"sacct failed with exit status 1: {message}" in done.stderr
        assert not site["state"].exists()

    def test_a_missing_sacct_is_reported(self, site):
        site["token"].write_text("ap_secret_not_used")

        done = run_client(
            site,
            "http://127.0.0.1:9",
            "--since",
            "2026-03-01T00:00:00Z",
            "--sacct",
            str(site["dir"] / "no-such-sacct"),
        )

        assert done.returncode == 1
        assert "no-such-sacct not found" in done.stderr

    def test_a_missing_token_file_is_reported(self, site):
        done = run_client(site, "http://127.0.0.1:9", "--since", "2026-03-01T00:00:00Z")

        assert done.returncode == 1
        assert f"token file {site['token']} does not exist" in done.stderr
        assert not site["calls"].exists()

    def test_a_dry_run_maps_the_jobs_and_posts_nothing(self, site):
        done = run_client(
            site, "http://127.0.0.1:9", "--since", "2026-03-01T00:00:00Z", "--dry-run"
        )

        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert records == [
            {
                "job_id": "1001",
                "user": "alice",
                "allocation": "folding-gpu",
                "resource": "CPU",
                "raw_unit_seconds": "28800.000",
                "start": "2026-03-01T08:00:00Z",
                "end": "2026-03-01T09:00:00Z",
            },
            {
                "job_id": "1001",
                "user": "alice",
                "allocation": "folding-gpu",
                "resource": "GPU H200",
                "raw_unit_seconds": "7200.000",
                "start": "2026-03-01T08:00:00Z",
                "end": "2026-03-01T09:00:00Z",
            },
            {
                "job_id": "1002",
                "user": "bob",
                "allocation": "folding-gpu",
                "resource": "CPU",
                "raw_unit_seconds": "7200.000",
                "start": "2026-03-01T10:00:00Z",
                "end": "2026-03-01T10:30:00Z",
            },
        ]
        assert not site["state"].exists()
