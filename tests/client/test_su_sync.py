"""client/su_sync.py end to end: the client runs as a subprocess, as it does beside Slurm, with
a fake sacctmgr and sshare on PATH (tests/client/fake_slurm) keeping Slurm's associations in a
file, and the real API behind live_server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from accounts.tokens import api_token_issue
from allocations import services
from allocations.models import Cluster, Membership, Status, SyncReport, TresMapping
from tests.client.test_su_importer import closed_port
from tests.conftest import usage

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "client" / "su_sync.py"
FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm"

# The fixtures' allocation: 1,000 SU, alice without a cap, bob capped at 300; the cluster's
# billing unit costs 1 SU an hour, so an SU is 60 billing-minutes.
ACCOUNT_MINUTES = 60000
BOB_MINUTES = 18000
ROOT_ROWS = [
    {"cluster": "gpu1", "account": "root", "user": "", "partition": "", "grp_jobs": None},
    {"cluster": "gpu1", "account": "root", "user": "root", "partition": "", "grp_jobs": None},
]


def row(account, user="", *, grp_jobs=None, billing=None, used=0, partition=""):
    return {
        "cluster": "gpu1",
        "account": account,
        "user": user,
        "partition": partition,
        "grp_jobs": grp_jobs,
        "grp_tres_mins": {} if billing is None else {"billing": billing},
        "usage": {"cpu": used, "billing": used},
    }


@pytest.fixture
def slurm(tmp_path):
    """A Slurm host: the token file, the fake's state and call log, and PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacctmgr").symlink_to(FAKE_SLURM)
    (bin_dir / "sshare").symlink_to(FAKE_SLURM)
    state = tmp_path / "slurm.json"
    state.write_text(json.dumps({"associations": ROOT_ROWS}))
    return {
        "token": tmp_path / "token",
        "state": state,
        "log": tmp_path / "calls.jsonl",
        # fake_slurm runs with `env python3`: the interpreter running the tests comes first.
        "env": {
            **os.environ,
            "PATH": os.pathsep.join(
                [str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
            ),
            "FAKE_SLURM_STATE": str(state),
            "FAKE_SLURM_LOG": str(tmp_path / "calls.jsonl"),
        },
    }


@pytest.fixture
def issued(dana, cluster, slurm):
    token = api_token_issue(actor=dana, cluster=cluster, name="slurm sync")
    slurm["token"].write_text(token.secret + "\n")
    return token


def run_sync(slurm, portal, *extra, env=None):
    args = [
        sys.executable,
        str(CLIENT),
        "--portal",
        portal,
        "--cluster",
        "gpu1",
        "--token-file",
        str(slurm["token"]),
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
        env={**slurm["env"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def associations(slurm) -> dict[tuple[str, str], dict]:
    rows = json.loads(slurm["state"].read_text())["associations"]
    return {(r["account"], r["user"]): r for r in rows if r["account"] != "root"}


def limits(slurm, account, user="") -> tuple:
    assoc = associations(slurm)[(account, user)]
    return assoc["grp_jobs"], assoc.get("grp_tres_mins", {}).get("billing")


def set_rows(slurm, *rows) -> None:
    slurm["state"].write_text(json.dumps({"associations": [*ROOT_ROWS, *rows]}))


def changes(slurm) -> list[list[str]]:
    """The sacctmgr calls that are not reads, in order."""
    if not slurm["log"].exists():
        return []
    calls = [json.loads(line) for line in slurm["log"].read_text().splitlines()]
    return [c["argv"] for c in calls if c["prog"] == "sacctmgr" and "show" not in c["argv"]]


def verbs(slurm) -> list[str]:
    """Each change as `add account folding-gpu`, `modify user bob`..."""
    found = []
    for argv in changes(slurm):
        words = [w for w in argv if w != "--immediate"]
        name = (
            next(w.split("=", 1)[1] for w in words if w.startswith("name="))
            if (words[0] == "modify")
            else words[2]
        )
        found.append(f"{words[0]} {words[1]} {name}")
    return found


def synced(slurm, portal):
    done = run_sync(slurm, portal, "--apply")
    assert done.returncode == 0, done.stderr
    slurm["log"].unlink()
    return done


@pytest.mark.django_db(transaction=True)
class TestAgainstThePortal:
    def test_a_dry_run_prints_the_drift_and_changes_nothing(
        self, live_server, allocation, issued, slurm, gpu
    ):
        TresMapping.objects.create(cluster=allocation.cluster, tres="gres/gpu:h200", resource=gpu)
        before = slurm["state"].read_text()

        done = run_sync(slurm, live_server.url)

        assert done.returncode == 0, done.stderr
        assert "(every partition): TRESBillingWeights=gres/gpu:h200=2\n" in done.stdout
        assert "drift: missing_account folding-gpu" in done.stdout
        assert "drift: missing_user folding-gpu/bob" in done.stdout
        assert "would run: sacctmgr --immediate add account folding-gpu" in done.stdout
        assert "dry run: nothing applied" in done.stdout
        assert slurm["state"].read_text() == before
        assert changes(slurm) == []
        report = SyncReport.objects.get()
        assert (report.mode, report.succeeded, report.drift_count) == ("DRY_RUN", True, 3)
        assert report.applied == []
        assert report.token == issued.token
        assert issued.secret not in done.stdout + done.stderr

    def test_a_fresh_cluster_gets_its_account_before_its_users(
        self, live_server, allocation, issued, slurm
    ):
        done = run_sync(slurm, live_server.url, "--apply")

        assert done.returncode == 0, done.stderr
        assert verbs(slurm) == [
            "add account folding-gpu",
            "add user alice",
            "add user bob",
        ]
        assert limits(slurm, "folding-gpu") == (None, ACCOUNT_MINUTES)
        # alice has no cap: the account's limit is hers; bob's cap is his own limit.
        assert limits(slurm, "folding-gpu", "alice") == (None, None)
        assert limits(slurm, "folding-gpu", "bob") == (None, BOB_MINUTES)
        add_account = changes(slurm)[0]
        assert "cluster=gpu1" in add_account
        assert "Description=Protein folding" in add_account
        report = SyncReport.objects.get()
        assert (report.mode, report.succeeded, report.error) == ("APPLY", True, "")
        assert report.applied == [
            "sacctmgr --immediate add account folding-gpu cluster=gpu1 "
            f"'Description=Protein folding' GrpTRESMins=billing={ACCOUNT_MINUTES}",
            "sacctmgr --immediate add user alice Account=folding-gpu cluster=gpu1",
            "sacctmgr --immediate add user bob Account=folding-gpu cluster=gpu1 "
            f"GrpTRESMins=billing={BOB_MINUTES}",
        ]

    def test_an_account_nobody_may_run_on_yet_is_not_created(
        self, live_server, pending_request, issued, slurm
    ):
        # The allocation awaits its first approval: INACTIVE.
        done = run_sync(slurm, live_server.url, "--apply")

        assert done.returncode == 0, done.stderr
        assert "1 accounts, 0 associations differ" in done.stdout
        assert changes(slurm) == []

    def test_a_resync_changes_nothing(self, live_server, allocation, issued, slurm):
        synced(slurm, live_server.url)
        before = slurm["state"].read_text()

        again = run_sync(slurm, live_server.url, "--apply")

        assert again.returncode == 0, again.stderr
        assert "0 associations differ, 0 commands to run" in again.stdout
        assert changes(slurm) == []
        assert slurm["state"].read_text() == before
        latest = SyncReport.objects.order_by("-created", "-id").first()
        assert (latest.drift_count, latest.applied) == (0, [])

    def test_limits_count_on_from_the_usage_slurm_already_has(
        self, live_server, allocation, issued, slurm, alice, bob, gpu
    ):
        # 20 SU charged to bob: the account has 980 SU left, bob 280 under his cap.
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 10)
        )
        set_rows(
            slurm,
            row("folding-gpu", billing=ACCOUNT_MINUTES, used=5000),
            row("folding-gpu", "alice", used=3800),
            row("folding-gpu", "bob", billing=BOB_MINUTES, used=1500),
        )

        done = run_sync(slurm, live_server.url, "--apply")

        assert done.returncode == 0, done.stderr
        assert limits(slurm, "folding-gpu") == (None, 5000 + 980 * 60)
        assert limits(slurm, "folding-gpu", "bob") == (None, 1500 + 280 * 60)
        assert limits(slurm, "folding-gpu", "alice") == (None, None)
        # Both raise a limit: relaxing, so after anything that restricts.
        assert verbs(slurm) == ["modify account folding-gpu", "modify user bob"]

    def test_every_restriction_is_applied_before_anything_is_relaxed(
        self, live_server, allocation, issued, slurm
    ):
        set_rows(
            slurm,
            row("folding-gpu", grp_jobs=0, billing=ACCOUNT_MINUTES + 500),
            row("folding-gpu", "alice"),
            row("folding-gpu", "bob", grp_jobs=0, billing=BOB_MINUTES),
        )

        done = run_sync(slurm, live_server.url, "--apply")

        assert done.returncode == 0, done.stderr
        account = ["--immediate", "modify", "account", "where", "name=folding-gpu", "cluster=gpu1"]
        bob = ["--immediate", "modify", "user", "where", "name=bob", "account=folding-gpu"]
        assert changes(slurm) == [
            [*account, "set", f"GrpTRESMins=billing={ACCOUNT_MINUTES}"],
            [*account, "set", "GrpJobs=-1"],
            [*bob, "cluster=gpu1", "set", "GrpJobs=-1"],
        ]

    def test_a_frozen_member_is_blocked_and_unfreezing_restores_them(
        self, live_server, allocation, issued, slurm, alice
    ):
        synced(slurm, live_server.url)
        bob = Membership.objects.get(allocation=allocation, user__username="bob")
        services.membership_set_status(actor=alice, membership=bob, status=Status.INACTIVE)

        frozen = run_sync(slurm, live_server.url, "--apply")

        assert frozen.returncode == 0, frozen.stderr
        assert "drift: limits folding-gpu/bob: GrpJobs=none" in frozen.stdout
        assert changes(slurm) == [
            [
                "--immediate",
                "modify",
                "user",
                "where",
                "name=bob",
                "account=folding-gpu",
                "cluster=gpu1",
                "set",
                "GrpJobs=0",
            ]
        ]
        assert limits(slurm, "folding-gpu", "bob") == (0, BOB_MINUTES)
        assert limits(slurm, "folding-gpu") == (None, ACCOUNT_MINUTES)
        slurm["log"].unlink()

        services.membership_set_status(actor=alice, membership=bob, status=Status.ACTIVE)
        thawed = run_sync(slurm, live_server.url, "--apply")

        assert thawed.returncode == 0, thawed.stderr
        assert limits(slurm, "folding-gpu", "bob") == (None, BOB_MINUTES)

    def test_a_frozen_project_blocks_the_account_not_each_member(
        self, live_server, allocation, issued, slurm, staff
    ):
        synced(slurm, live_server.url)
        services.project_set_status(
            actor=staff, project=allocation.project, status=Status.INACTIVE, reason="Audit"
        )

        done = run_sync(slurm, live_server.url, "--apply")

        assert done.returncode == 0, done.stderr
        assert verbs(slurm) == ["modify account folding-gpu"]
        assert limits(slurm, "folding-gpu") == (0, ACCOUNT_MINUTES)
        assert limits(slurm, "folding-gpu", "bob") == (None, BOB_MINUTES)

    def test_an_exhausted_allocation_is_blocked_at_its_usage(
        self, live_server, allocation, issued, slurm, alice, gpu
    ):
        synced(slurm, live_server.url)
        # 500 GPU-hours at 2 SU: the whole 1,000 SU; Slurm counted them too.
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, alice, gpu, "1", 500)
        )
        state = json.loads(slurm["state"].read_text())
        for assoc in state["associations"]:
            if (assoc["account"], assoc["user"]) in (("folding-gpu", ""), ("folding-gpu", "alice")):
                assoc["usage"] = {"billing": ACCOUNT_MINUTES}
        slurm["state"].write_text(json.dumps(state))

        done = run_sync(slurm, live_server.url, "--apply")

        assert done.returncode == 0, done.stderr
        assert limits(slurm, "folding-gpu") == (0, ACCOUNT_MINUTES)
        assert verbs(slurm) == ["modify account folding-gpu"]

    def test_a_new_member_is_added_under_the_existing_account(
        self, live_server, allocation, issued, slurm, alice, charlie
    ):
        synced(slurm, live_server.url)
        services.membership_add(actor=alice, allocation=allocation, user=charlie, su_cap="50")

        done = run_sync(slurm, live_server.url, "--apply")

        assert done.returncode == 0, done.stderr
        assert verbs(slurm) == ["add user charlie"]
        assert limits(slurm, "folding-gpu", "charlie") == (None, 50 * 60)

    def test_a_removed_member_is_blocked_never_deleted(
        self, live_server, allocation, issued, slurm, alice
    ):
        synced(slurm, live_server.url)
        bob = Membership.objects.get(allocation=allocation, user__username="bob")
        services.membership_remove(actor=alice, membership=bob)

        done = run_sync(slurm, live_server.url, "--apply")

        assert done.returncode == 0, done.stderr
        assert verbs(slurm) == ["modify user bob"]
        assert limits(slurm, "folding-gpu", "bob") == (0, BOB_MINUTES)
        assert not any("delete" in argv for argv in changes(slurm))

    def test_someone_slurm_has_under_a_portal_account_is_blocked(
        self, live_server, allocation, issued, slurm
    ):
        synced(slurm, live_server.url)
        state = json.loads(slurm["state"].read_text())
        state["associations"].append(row("folding-gpu", "mallory", used=10))
        slurm["state"].write_text(json.dumps(state))

        done = run_sync(slurm, live_server.url, "--apply")

        assert done.returncode == 0, done.stderr
        assert "drift: unknown_user folding-gpu/mallory" in done.stdout
        assert limits(slurm, "folding-gpu", "mallory") == (0, None)

    def test_a_failure_half_way_stops_there_and_a_rerun_completes(
        self, live_server, allocation, issued, slurm
    ):
        failed = run_sync(
            slurm, live_server.url, "--apply", env={"FAKE_SACCTMGR_FAIL": "add user bob"}
        )

        assert failed.returncode == 2
        assert "command 3 of 3 failed with exit status 1" in failed.stderr
        assert "Connection refused" in failed.stderr
        assert "2 commands applied, 1 not" in failed.stderr
        assert set(associations(slurm)) == {("folding-gpu", ""), ("folding-gpu", "alice")}
        report = SyncReport.objects.get()
        assert report.succeeded is False
        assert len(report.applied) == 2
        assert "add user bob" in report.error
        slurm["log"].unlink()

        rerun = run_sync(slurm, live_server.url, "--apply")

        assert rerun.returncode == 0, rerun.stderr
        assert verbs(slurm) == ["add user bob"]
        assert limits(slurm, "folding-gpu", "bob") == (None, BOB_MINUTES)

    def test_a_failing_account_stops_before_its_users(self, live_server, allocation, issued, slurm):
        done = run_sync(
            slurm, live_server.url, "--apply", env={"FAKE_SACCTMGR_FAIL": "add account"}
        )

        assert done.returncode == 2
        assert "command 1 of 3 failed" in done.stderr
        assert verbs(slurm) == ["add account folding-gpu"]  # tried, refused; nothing after it
        assert associations(slurm) == {}
        assert SyncReport.objects.get().applied == []

    def test_tighten_only_blocks_but_adds_and_relaxes_nothing(
        self, live_server, allocation, issued, slurm, alice, charlie
    ):
        synced(slurm, live_server.url)
        bob = Membership.objects.get(allocation=allocation, user__username="bob")
        services.membership_remove(actor=alice, membership=bob)
        services.membership_add(actor=alice, allocation=allocation, user=charlie)

        done = run_sync(slurm, live_server.url, "--apply", "--tighten-only")

        assert done.returncode == 0, done.stderr
        assert verbs(slurm) == ["modify user bob"]
        assert "1 relaxing commands left for a full run" in done.stdout
        assert ("folding-gpu", "charlie") not in associations(slurm)

    def test_another_clusters_token_is_refused_and_nothing_is_read_or_applied(
        self, live_server, allocation, dana, slurm
    ):
        other = Cluster.objects.create(name="cpu2", title="CPU cluster")
        other.admins.add(dana)
        slurm["token"].write_text(api_token_issue(actor=dana, cluster=other, name="x").secret)

        done = run_sync(slurm, live_server.url, "--apply")

        assert done.returncode == 3
        assert "HTTP 403: This token belongs to another cluster." in done.stderr
        assert not slurm["log"].exists()
        assert not SyncReport.objects.exists()

    def test_a_failing_sacctmgr_read_is_reported_and_nothing_is_applied(
        self, live_server, allocation, issued, slurm
    ):
        done = run_sync(
            slurm, live_server.url, "--apply", env={"FAKE_SACCTMGR_FAIL": "show associations"}
        )

        assert done.returncode == 1
        assert "failed with exit status 1: sacctmgr: error: Problem talking" in done.stderr
        assert changes(slurm) == []
        assert not SyncReport.objects.exists()


class TestWithoutThePortal:
    def test_an_unreachable_portal_fails_after_the_retries_and_touches_no_slurm(self, slurm):
        slurm["token"].write_text("sup_not_used")

        done = run_sync(slurm, f"http://127.0.0.1:{closed_port()}", "--apply")

        assert done.returncode == 4
        assert done.stderr.count("retrying in") == 2
        assert "cannot reach" in done.stderr
        assert "gave up after 3 attempts" in done.stderr
        assert not slurm["log"].exists()

    def test_a_missing_token_file_is_reported(self, slurm):
        done = run_sync(slurm, "http://127.0.0.1:9", "--apply")

        assert done.returncode == 1
        assert f"token file {slurm['token']} does not exist" in done.stderr
        assert not slurm["log"].exists()
