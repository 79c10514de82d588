"""Usage and end-date warnings, and closing what has ended: with the locmem e-mail backend
(pytest-django's mailoutbox) and a fake clock."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from allocations import alerts, services
from allocations.models import (
    AlertSent,
    AllocationChange,
    Membership,
    MembershipChange,
    Status,
)
from allocations.tasks import close_ended_task, send_alerts_task
from tests.conftest import usage

JUNE = dt.datetime(2026, 6, 15, 12, tzinfo=dt.UTC)


def on(year, month, day) -> dt.datetime:
    return dt.datetime(year, month, day, 6, tzinfo=dt.UTC)


@pytest.fixture
def send(django_capture_on_commit_callbacks):
    """Runs the sweep at a fake time and delivers what it queued for after the commit."""

    def run(now=JUNE):
        with django_capture_on_commit_callbacks(execute=True):
            return alerts.alerts_send(now=now)

    return run


@pytest.fixture
def charge(allocation, gpu):
    count = iter(range(1, 10_000))

    def run(user, su):
        # GPU H200 costs 2 SU per GPU-hour.
        services.usage_record_batch(
            cluster=allocation.cluster,
            records=[usage(allocation, user, gpu, f"job-{next(count)}", Decimal(su) / 2)],
        )

    return run


class TestUsageAlerts:
    def test_nothing_is_sent_below_the_first_threshold(
        self, allocation, alice, charge, send, mailoutbox
    ):
        charge(alice, 749)

        assert send() == {"usage": 0, "ending": 0}
        assert mailoutbox == []

    def test_crossing_a_threshold_mails_the_pi_once(
        self, allocation, alice, charge, send, mailoutbox, settings
    ):
        settings.SITE_URL = "https://portal.example.edu"
        charge(alice, 760)

        assert send()["usage"] == 1
        assert send()["usage"] == 0

        (mail,) = mailoutbox
        assert mail.to == ["alice@example.edu"]
        assert mail.subject == "folding-gpu on gpu1 has used 76% of its SUs"
        assert "has used 760.0000 of its 1000.0000 SUs: 76%, past the 75% warning" in mail.body
        assert "240.0000 SUs are left" in mail.body
        assert "https://portal.example.edu/" in mail.body
        (row,) = AlertSent.objects.all()
        assert (row.kind, row.threshold, row.basis, row.membership) == ("USAGE", 75, 1000, None)
        assert row.recipients == "alice@example.edu"
        assert row.created == JUNE

    def test_a_jump_past_several_thresholds_sends_one_mail_naming_the_highest(
        self, allocation, alice, charge, send, mailoutbox
    ):
        charge(alice, 1010)

        send()

        assert sorted(AlertSent.objects.values_list("threshold", flat=True)) == [75, 90, 100]
        (mail,) = mailoutbox
        assert "past the 100% warning" in mail.body
        assert "No SUs are left: new jobs are refused" in mail.body

    def test_managers_are_told_as_well(self, allocation, alice, charlie, charge, send, mailoutbox):
        services.project_add_manager(actor=alice, project=allocation.project, user=charlie)
        charge(alice, 800)

        send()

        assert sorted(mailoutbox[0].to) == ["alice@example.edu", "charlie@example.edu"]

    def test_each_crossing_warns_again_after_a_supplement(
        self, allocation, alice, dana, charge, send, mailoutbox
    ):
        charge(alice, 800)
        send()
        services.allocation_change_apply(
            actor=dana, allocation=allocation, su_delta="1000", reason="Supplement"
        )

        send()  # 800 of 2,000: under every threshold again
        charge(alice, 800)  # 1,600 of 2,000
        send()
        send()

        assert [m.subject for m in mailoutbox] == [
            "folding-gpu on gpu1 has used 80% of its SUs",
            "folding-gpu on gpu1 has used 80% of its SUs",
        ]
        assert sorted(AlertSent.objects.values_list("threshold", "basis")) == [
            (75, Decimal(1000)),
            (75, Decimal(2000)),
        ]

    def test_a_member_is_warned_about_their_cap(self, allocation, bob, charge, send, mailoutbox):
        charge(bob, 280)  # of a 300 SU cap

        send()

        (mail,) = mailoutbox
        assert sorted(mail.to) == ["alice@example.edu", "bob@example.edu"]
        assert mail.subject == "bob has used 93% of their SU cap on folding-gpu (gpu1)"
        assert "past the 90% warning" in mail.body
        member_rows = AlertSent.objects.filter(membership__user=bob)
        assert sorted(member_rows.values_list("threshold", flat=True)) == [75, 90]

    def test_the_allocations_own_thresholds_win(self, allocation, alice, charge, send, mailoutbox):
        alerts.allocation_set_alert_thresholds(actor=alice, allocation=allocation, thresholds="50")
        charge(alice, 600)

        send()

        assert [row.threshold for row in AlertSent.objects.all()] == [50]
        assert "past the 50% warning" in mailoutbox[0].body

    def test_the_site_default_comes_from_the_setting(
        self, allocation, alice, charge, send, settings
    ):
        settings.ALERT_THRESHOLDS = "10"
        charge(alice, 150)

        send()

        assert [row.threshold for row in AlertSent.objects.all()] == [10]

    def test_frozen_allocations_are_not_warned(
        self, allocation, alice, dana, charge, send, mailoutbox
    ):
        charge(alice, 900)
        services.allocation_set_status(
            actor=dana, allocation=allocation, status=Status.INACTIVE, reason="Audit"
        )

        send()

        assert mailoutbox == []

    def test_mail_goes_out_only_after_the_commit(
        self, allocation, alice, charge, mailoutbox, django_capture_on_commit_callbacks
    ):
        charge(alice, 800)
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            alerts.alerts_send(now=JUNE)

        assert mailoutbox == []
        (callback,) = callbacks
        callback()
        assert len(mailoutbox) == 1

    def test_a_sweep_that_lost_the_race_sends_nothing(
        self, allocation, alice, charge, mailoutbox, django_capture_on_commit_callbacks
    ):
        charge(alice, 800)
        # Two workers found the same crossing; the second claims it after the first.
        first = alerts._usage_candidates(JUNE)
        second = alerts._usage_candidates(JUNE)
        with django_capture_on_commit_callbacks(execute=True):
            assert alerts._deliver(first, JUNE) == 1
            assert alerts._deliver(second, JUNE) == 0

        assert len(mailoutbox) == 1
        assert AlertSent.objects.count() == 1


class TestEndingAlerts:
    def test_the_pi_is_warned_30_and_7_days_before_the_end(self, allocation, send, mailoutbox):
        for now in [
            on(2026, 11, 30),  # 31 days left
            on(2026, 12, 1),  # 30
            on(2026, 12, 2),
            on(2026, 12, 24),  # 7
            on(2026, 12, 30),
        ]:
            send(now)

        assert [m.subject for m in mailoutbox] == ["folding-gpu on gpu1 ends on 2026-12-31"] * 2
        assert "in 30 days" in mailoutbox[0].body
        assert "in 7 days" in mailoutbox[1].body
        assert "1000.0000 of its 1000.0000 SUs are still unused" in mailoutbox[0].body

    def test_a_late_first_sweep_sends_only_the_nearest_warning(self, allocation, send, mailoutbox):
        send(on(2026, 12, 28))
        send(on(2026, 12, 29))

        (mail,) = mailoutbox
        assert "in 3 days" in mail.body
        assert sorted(AlertSent.objects.values_list("threshold", flat=True)) == [7, 30]

    def test_an_extension_re_arms_the_warnings(self, allocation, dana, send, mailoutbox):
        send(on(2026, 12, 1))
        services.allocation_change_apply(
            actor=dana, allocation=allocation, end=dt.date(2027, 1, 31), reason="Extended"
        )

        send(on(2026, 12, 2))  # 60 days left now: nothing
        send(on(2027, 1, 1))  # 30 days before the new end

        assert [m.subject.rsplit(" ", 1)[1] for m in mailoutbox] == ["2026-12-31", "2027-01-31"]

    def test_a_member_whose_access_ends_first_is_warned(self, allocation, bob, send, mailoutbox):
        Membership.objects.filter(allocation=allocation, user=bob).update(end=dt.date(2026, 6, 30))

        send(on(2026, 6, 23))

        (mail,) = mailoutbox
        assert sorted(mail.to) == ["alice@example.edu", "bob@example.edu"]
        assert mail.subject == "Your access to folding-gpu (gpu1) ends on 2026-06-30"

    def test_the_days_come_from_the_setting(self, allocation, send, settings):
        settings.ALERT_ENDING_DAYS = "60"
        send(on(2026, 11, 1))
        assert list(AlertSent.objects.values_list("threshold", flat=True)) == [60]


class TestCloseEnded:
    def test_an_allocation_past_its_end_is_closed_by_a_diff(self, allocation):
        assert alerts.close_ended(today=dt.date(2026, 12, 31)) == {
            "allocations": 0,
            "memberships": 0,
        }
        assert alerts.close_ended(today=dt.date(2027, 1, 1)) == {
            "allocations": 1,
            "memberships": 0,
        }
        assert alerts.close_ended(today=dt.date(2027, 1, 2))["allocations"] == 0

        allocation.refresh_from_db()
        assert allocation.status == Status.INACTIVE
        diff = AllocationChange.objects.filter(allocation=allocation).last()
        assert (diff.kind, diff.status, diff.actor, diff.reason) == (
            "EXPIRY",
            "INACTIVE",
            None,
            "Ended on 2026-12-31",
        )
        assert diff.su_delta == 0 and diff.su_budget == allocation.su_budget

    def test_a_membership_past_its_own_end_is_closed_and_recorded(self, allocation, bob):
        Membership.objects.filter(user=bob).update(end=dt.date(2026, 6, 30))

        assert alerts.close_ended(today=dt.date(2026, 7, 1))["memberships"] == 1
        assert alerts.close_ended(today=dt.date(2026, 7, 2))["memberships"] == 0

        member = Membership.objects.get(user=bob)
        assert member.status == Status.INACTIVE
        change = MembershipChange.objects.filter(membership=member).last()
        assert (change.kind, change.status, change.actor) == ("STATUS", "INACTIVE", None)

    def test_an_extension_that_lands_first_keeps_it_open(self, allocation, dana):
        services.allocation_change_apply(
            actor=dana, allocation=allocation, end=dt.date(2027, 6, 30), reason="Extended"
        )

        assert (
            services.allocation_expire(allocation_id=allocation.pk, today=dt.date(2027, 1, 1))
            is None
        )
        allocation.refresh_from_db()
        assert allocation.status == Status.ACTIVE


class TestTasks:
    """The tasks beat runs, on a fake clock: twice in a row changes nothing more."""

    def test_send_alerts_task(
        self, allocation, alice, charge, monkeypatch, mailoutbox, django_capture_on_commit_callbacks
    ):
        monkeypatch.setattr(timezone, "now", lambda: on(2026, 12, 24))
        charge(alice, 950)

        with django_capture_on_commit_callbacks(execute=True):
            assert send_alerts_task.delay().get() == {"usage": 1, "ending": 1}
            assert send_alerts_task.delay().get() == {"usage": 0, "ending": 0}

        assert len(mailoutbox) == 2

    def test_close_ended_task(self, allocation, monkeypatch):
        monkeypatch.setattr(timezone, "now", lambda: on(2027, 1, 1))

        assert close_ended_task.delay().get() == {"allocations": 1, "memberships": 0}
        assert close_ended_task.delay().get() == {"allocations": 0, "memberships": 0}

    def test_they_are_late_acknowledged_and_time_limited(self):
        for task in (send_alerts_task, close_ended_task):
            assert task.acks_late is True
            assert 0 < task.soft_time_limit < task.time_limit


class TestParseThresholds:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("75,90,100", (75, 90, 100)), (" 90 , 75,90 ", (75, 90)), ("1", (1,))],
    )
    def test_it_reads_a_list_of_percentages(self, text, expected):
        assert alerts.parse_thresholds(text) == expected

    def test_more_than_ten_is_too_many(self):
        with pytest.raises(alerts.ValidationError, match="at most 10"):
            alerts.parse_thresholds(",".join(str(i) for i in range(1, 12)))
