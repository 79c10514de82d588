#!/usr/bin/env python3
"""su_sync: makes Slurm's accounts and associations enforce the allocation portal's budgets.

Python standard library only (3.8+); copy it with su_common.py to a host where sacctmgr and
sshare work, next to su_importer.py, and run it right after the importer:

    su_sync.py --portal https://portal.example.edu --cluster gpu1 \\
        --token-file /etc/su-importer/token [--apply]

Each run reads the desired state (GET /api/v1/clusters/<cluster>/desired-state/), Slurm's
associations (sacctmgr --parsable2 show associations) and their usage so far (sshare's
GrpTRESRaw), prints the drift and, with --apply, runs the sacctmgr commands that remove it,
in this order: first every change that restricts (blocks, lower limits), then missing
accounts, then missing user associations, then every change that relaxes. It stops at the
first command that fails; running it again does the rest. Nothing is ever deleted: a member
who was removed is blocked (GrpJobs=0); an account or member nobody may run as yet is not
created until they may. A dry run (the default) changes nothing. Either way
it reports the drift and the commands applied to POST /api/v1/clusters/<cluster>/sync-reports/.

The limit set is GrpTRESMins=billing=<the association's billing usage now, rounded down +
the portal's headroom>, because Slurm compares GrpTRESMins with all the usage it has
accumulated, which the portal's remaining SUs already account for.

Exit status: 0 in sync, or every change applied (or a dry run); 1 a local problem (token
file, options, sacctmgr or sshare cannot be read, a portal answer that is not understood);
2 a sacctmgr command failed: the run stopped there, run again once the cause is fixed;
3 the token was refused (401/403); 4 the portal could not be reached after the retries.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from su_common import (
    EXIT_OK,
    EXIT_REJECTED,
    Failure,
    __version__,
    add_portal_options,
    check_portal_options,
    detail,
    log,
    portal_url,
    read_token,
    refused_token,
    request_json,
)

AGENT = "su-sync"
ASSOC_FORMAT = "Account,User,Partition,GrpJobs,GrpTRESMins"
SHARE_FORMAT = "Account,User,GrpTRESRaw"
BILLING = "billing"
# The order changes are applied in: nothing is relaxed before every restriction is in place,
# and a user association is only added once its account exists.
TIGHTEN, ADD_ACCOUNT, ADD_USER, LOOSEN = range(4)
PHASES = ("restrict", "add account", "add user", "relax")


# ---------------------------------------------------------------------------------- slurm


def run_command(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(  # noqa: S603 (a fixed argument list, no shell)
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(os.environ, TZ="UTC"),
        )
    except FileNotFoundError:
        raise Failure(f"{argv[0]} not found: is Slurm installed and on PATH?") from None
    except PermissionError:
        raise Failure(f"{argv[0]} is not executable") from None
    except subprocess.TimeoutExpired:
        raise Failure(f"{shlex.join(argv)} did not finish within {timeout:g} s") from None


def read_command(argv: list[str], timeout: float) -> str:
    done = run_command(argv, timeout)
    if done.returncode != 0:
        stderr = done.stderr.strip() or "(no output on stderr)"
        raise Failure(f"{shlex.join(argv)} failed with exit status {done.returncode}: {stderr}")
    return done.stdout


def tres_value(text: str, name: str) -> Decimal | None:
    """The value of TRES `name` in `cpu=10,billing=600`, or None when it is not there."""
    for entry in text.split(","):
        key, sep, value = entry.partition("=")
        if sep and key.strip().lower() == name:
            try:
                number = Decimal(value.strip())
            except InvalidOperation:
                raise Failure(f"cannot read {name}={value!r} in {text!r}") from None
            return number if number.is_finite() else None
    return None


def parse_rows(text: str, columns: int, what: str) -> list[list[str]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < columns:
            raise Failure(f"{what} line {number} has {len(fields)} fields, expected {columns}")
        rows.append([field.strip() for field in fields[:columns]])
    return rows


class Limits:
    """An association's GrpJobs and GrpTRESMins on billing; None is no limit."""

    __slots__ = ("billing", "grp_jobs")

    def __init__(self, grp_jobs: int | None, billing: int | None):
        self.grp_jobs, self.billing = grp_jobs, billing

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Limits) and (self.grp_jobs, self.billing) == (
            other.grp_jobs,
            other.billing,
        )

    def __str__(self) -> str:
        jobs = "none" if self.grp_jobs is None else self.grp_jobs
        billing = "none" if self.billing is None else self.billing
        return f"GrpJobs={jobs} GrpTRESMins={BILLING}={billing}"


def read_associations(args: argparse.Namespace) -> dict[tuple[str, str], Limits]:
    """(account, user) -> limits; user "" is the account's own association."""
    argv = [
        args.sacctmgr,
        "--parsable2",
        "--noheader",
        "show",
        "associations",
        "where",
        f"cluster={args.slurm_cluster}",
        f"format={ASSOC_FORMAT}",
    ]
    found: dict[tuple[str, str], Limits] = {}
    for account, user, partition, grp_jobs, tres_mins in parse_rows(
        read_command(argv, args.command_timeout), 5, "sacctmgr"
    ):
        # Partition associations are the site's own refinement; they are left alone.
        if partition:
            continue
        if grp_jobs and not grp_jobs.lstrip("-").isdigit():
            raise Failure(f"sacctmgr: GrpJobs {grp_jobs!r} of {account}/{user} is not a number")
        jobs = int(grp_jobs) if grp_jobs and int(grp_jobs) >= 0 else None
        billing = tres_value(tres_mins, BILLING)
        found[(account.lower(), user.lower())] = Limits(
            jobs, int(billing) if billing is not None and billing >= 0 else None
        )
    return found


def read_usage(args: argparse.Namespace) -> dict[tuple[str, str], int]:
    """(account, user) -> billing-minutes Slurm has counted, rounded down."""
    argv = [args.sshare, "--parsable2", "--noheader", "--all", f"--format={SHARE_FORMAT}"]
    usage = {}
    for account, user, raw in parse_rows(read_command(argv, args.command_timeout), 3, "sshare"):
        value = tres_value(raw, BILLING) or Decimal(0)
        usage[(account.lower(), user.lower())] = int(value.to_integral_value(ROUND_FLOOR))
    return usage


# --------------------------------------------------------------------------------- portal


def fetch_desired(token: str, args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """The accounts with their users, and the billing weights for the rates in force."""
    url = portal_url(args, f"/api/v1/clusters/{args.cluster}/desired-state/")
    status, answer = request_json("GET", url, token, None, args, AGENT)
    if status in (401, 403):
        raise refused_token(status, answer, args)
    if status == 404:
        raise Failure(f"the portal knows no cluster {args.cluster!r}: {detail(answer)}")
    if status != 200 or not isinstance(answer, dict):
        raise Failure(f"the portal answered HTTP {status}: {detail(answer)}")
    try:
        accounts, weights = answer["accounts"], answer.get("billing_weights") or []
        for weight in weights:
            if not isinstance(weight["tres"], str) or not isinstance(weight["partition"], str):
                raise ValueError(f"billing weight {weight!r}")
        for account in accounts:
            _check_entry(account, "account")
            int(account["billing_minutes"])
            for user in account["users"]:
                _check_entry(user, "user")
    except (KeyError, TypeError, ValueError) as exc:
        raise Failure(f"the portal's desired state is not understood ({exc!r})") from None
    return accounts, weights


def describe_weights(weights: list[dict]) -> list[str]:
    """One TRESBillingWeights value per partition, for the site to compare with slurm.conf."""
    by_partition: dict[str, list[str]] = {}
    for weight in weights:
        number = weight["weight"]
        value = "none" if number is None else format(Decimal(number).normalize(), "f")
        by_partition.setdefault(weight["partition"], []).append(f"{weight['tres']}={value}")
    return [
        f"billing weights for the rates in force ({partition or 'every partition'}): "
        f"TRESBillingWeights={','.join(entries)}"
        for partition, entries in sorted(by_partition.items())
    ]


def _check_entry(entry: dict, name_key: str) -> None:
    if not isinstance(entry[name_key], str) or not entry[name_key]:
        raise ValueError(f"{name_key} name {entry[name_key]!r}")
    if entry["grp_jobs"] not in (None, 0):
        raise ValueError(f"grp_jobs {entry['grp_jobs']!r}")
    if entry["billing_minutes"] is not None and int(entry["billing_minutes"]) < 0:
        raise ValueError(f"billing_minutes {entry['billing_minutes']!r}")


def post_report(token: str, args: argparse.Namespace, body: dict) -> None:
    url = portal_url(args, f"/api/v1/clusters/{args.cluster}/sync-reports/")
    status, answer = request_json("POST", url, token, body, args, AGENT)
    if status in (401, 403):
        raise refused_token(status, answer, args)
    if status != 201:
        raise Failure(f"the portal did not take the sync report: HTTP {status}: {detail(answer)}")


# ----------------------------------------------------------------------------------- plan


class Change:
    """One association that differs, and the commands (with their phase) that fix it."""

    __slots__ = ("account", "commands", "current", "desired", "kind", "user")

    def __init__(self, kind, account, user, current, desired):
        self.kind, self.account, self.user = kind, account, user
        self.current, self.desired = current, desired
        self.commands: list[tuple[int, list[str]]] = []

    def drift(self) -> dict:
        return {
            "kind": self.kind,
            "account": self.account,
            "user": self.user,
            "current": self.current,
            "desired": self.desired,
        }

    def __str__(self) -> str:
        who = f"{self.account}/{self.user}" if self.user else self.account
        return f"{self.kind} {who}: {self.current or '(none)'} -> {self.desired}"


def _set_args(limits: Limits) -> list[str]:
    """sacctmgr settings for limits; -1 clears a limit."""
    jobs = -1 if limits.grp_jobs is None else limits.grp_jobs
    billing = -1 if limits.billing is None else limits.billing
    return [f"GrpJobs={jobs}", f"GrpTRESMins={BILLING}={billing}"]


def _is_tighter(new: int | None, old: int | None) -> bool:
    return new is not None and (old is None or new < old)


def _modify(change: Change, where: list[str], current: Limits, desired: Limits, args) -> None:
    """Splits one association's differences into a restricting and a relaxing command."""
    tighten: list[str] = []
    loosen: list[str] = []
    jobs_setting, billing_setting = _set_args(desired)
    settings = {"grp_jobs": jobs_setting, "billing": billing_setting}
    for attr in ("grp_jobs", "billing"):
        new, old = getattr(desired, attr), getattr(current, attr)
        if new != old:
            (tighten if _is_tighter(new, old) else loosen).append(settings[attr])
    base = [args.sacctmgr, "--immediate", "modify", *where, "set"]
    if tighten:
        change.commands.append((TIGHTEN, base + tighten))
    if loosen:
        change.commands.append((LOOSEN, base + loosen))


def _description(text: str) -> str:
    # sacctmgr strips quotes itself and stores at most a short line.
    cleaned = "".join(c for c in text if c.isprintable() and c not in "'\"|")
    return " ".join(cleaned.split())[:100] or "portal allocation"


def plan(
    desired: list[dict],
    current: dict[tuple[str, str], Limits],
    usage: dict[tuple[str, str], int],
    args: argparse.Namespace,
) -> list[Change]:
    cluster = f"cluster={args.slurm_cluster}"
    changes: list[Change] = []
    slurm_users: dict[str, list[tuple[str, Limits]]] = {}
    for (acct, user), have in sorted(current.items()):
        if user:
            slurm_users.setdefault(acct, []).append((user, have))

    def wanted(key: tuple[str, str], entry: dict) -> Limits:
        headroom = entry["billing_minutes"]
        billing = None if headroom is None else usage.get(key, 0) + int(headroom)
        return Limits(entry["grp_jobs"], billing)

    for account in desired:
        name = account["account"].lower()
        limits = wanted((name, ""), account)
        have = current.get((name, ""))
        if have is None and account["grp_jobs"] == 0:
            # Nobody may run on it yet (awaiting approval, frozen, ended): nothing to enforce,
            # and no account for a site to clean up later. It is added once it may run.
            continue
        if have is None:
            change = Change("missing_account", name, "", "", str(limits))
            command = [args.sacctmgr, "--immediate", "add", "account", name, cluster]
            command.append(f"Description={_description(account.get('description', ''))}")
            if args.parent:
                command.append(f"Parent={args.parent}")
            command += [s for s in _set_args(limits) if not s.endswith("=-1")]
            change.commands.append((ADD_ACCOUNT, command))
            changes.append(change)
        elif have != limits:
            change = Change("limits", name, "", str(have), str(limits))
            _modify(change, ["account", "where", f"name={name}", cluster], have, limits, args)
            changes.append(change)

        members = set()
        for member in account["users"]:
            user = member["user"].lower()
            members.add(user)
            limits = wanted((name, user), member)
            have = current.get((name, user))
            where = ["user", "where", f"name={user}", f"account={name}", cluster]
            if have is None:
                # A member blocked on their own has nothing to enforce until unblocked.
                if member["grp_jobs"] == 0:
                    continue
                change = Change("missing_user", name, user, "", str(limits))
                command = [args.sacctmgr, "--immediate", "add", "user", user]
                command += [f"Account={name}", cluster]
                command += [s for s in _set_args(limits) if not s.endswith("=-1")]
                change.commands.append((ADD_USER, command))
                changes.append(change)
            elif have != limits:
                change = Change("limits", name, user, str(have), str(limits))
                _modify(change, where, have, limits, args)
                changes.append(change)

        # Only members may run: anyone else under a portal account is blocked, not deleted.
        for user, have in slurm_users.get(name, []):
            if user in members or have.grp_jobs == 0:
                continue
            blocked = Limits(0, have.billing)
            change = Change("unknown_user", name, user, str(have), str(blocked))
            where = ["user", "where", f"name={user}", f"account={name}", cluster]
            _modify(change, where, have, blocked, args)
            changes.append(change)
    return changes


def ordered_commands(changes: list[Change], tighten_only: bool) -> list[list[str]]:
    # sorted() is stable: within a phase, the portal's order (accounts by name).
    steps = sorted((phase, i, argv) for i, c in enumerate(changes) for phase, argv in c.commands)
    return [argv for phase, _, argv in steps if phase == TIGHTEN or not tighten_only]


# ----------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Make Slurm's accounts and associations enforce the portal's budgets.",
        epilog="Exit status: 0 in sync or applied, 1 error, 2 a sacctmgr command failed "
        "(run again), 3 token refused, 4 portal unreachable.",
    )
    add_portal_options(parser)
    parser.add_argument(
        "--apply", action="store_true", help="run the sacctmgr commands (default: dry run)"
    )
    parser.add_argument(
        "--tighten-only",
        action="store_true",
        help="apply only blocks and lower limits (e.g. when the importer failed this round)",
    )
    parser.add_argument("--slurm-cluster", help="Slurm's ClusterName (default: --cluster)")
    parser.add_argument("--parent", help="parent account of new accounts (default: root)")
    parser.add_argument("--sacctmgr", default="sacctmgr", help="the sacctmgr command")
    parser.add_argument("--sshare", default="sshare", help="the sshare command")
    parser.add_argument(
        "--command-timeout", type=float, default=120, help="seconds per Slurm command"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    check_portal_options(args)
    args.slurm_cluster = args.slurm_cluster or args.cluster
    token = read_token(args.token_file)
    desired, weights = fetch_desired(token, args)
    for line in describe_weights(weights):
        print(line)
    current = read_associations(args)
    usage = read_usage(args)
    changes = plan(desired, current, usage, args)
    for change in changes:
        print(f"drift: {change}")
    commands = ordered_commands(changes, args.tighten_only)
    print(
        f"{args.cluster}: {len(desired)} accounts, {len(changes)} associations differ, "
        f"{len(commands)} commands to run"
    )
    report = {
        "mode": "APPLY" if args.apply else "DRY_RUN",
        "succeeded": True,
        "drift": [change.drift() for change in changes],
        "applied": [],
        "error": "",
        "client_version": __version__,
    }
    if not args.apply:
        for argv in commands:
            print(f"would run: {shlex.join(argv)}")
        post_report(token, args, report)
        print("dry run: nothing applied (run with --apply)")
        return EXIT_OK

    code = EXIT_OK
    for number, argv in enumerate(commands, start=1):
        done = run_command(argv, args.command_timeout)
        if done.returncode != 0:
            stderr = done.stderr.strip() or done.stdout.strip() or "(no output)"
            report["succeeded"] = False
            report["error"] = (
                f"command {number} of {len(commands)} failed with exit status "
                f"{done.returncode}: {shlex.join(argv)}: {stderr}"
            )
            log(f"su_sync: error: {report['error']}")
            log(
                f"stopped: {number - 1} commands applied, {len(commands) - number + 1} not; "
                "fix the cause and run again to apply the rest"
            )
            code = EXIT_REJECTED
            break
        report["applied"].append(shlex.join(argv))
        print(f"applied: {shlex.join(argv)}")
    try:
        post_report(token, args, report)
    except Failure as exc:
        # The sacctmgr changes stand either way; a failed command's status matters more.
        log(f"su_sync: error: {exc}")
        return code or exc.code
    if code == EXIT_OK:
        left = len(ordered_commands(changes, False)) - len(commands)
        note = f"; {left} relaxing commands left for a full run" if left else ""
        print(f"applied {len(report['applied'])} commands{note}")
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except Failure as exc:
        log(f"su_sync: error: {exc}")
        return exc.code
    except KeyboardInterrupt:
        log("su_sync: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
