"""E-mail at each step of a request, sent after commit and only then."""

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import transaction

from allocations import notifications, services
from allocations.models import ChangeRequest
from tests.conftest import make_user


@pytest.fixture(autouse=True)
def _site(settings):
    settings.SITE_URL = "https://portal.example.edu"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def recipients() -> list[str]:
    return sorted(address for message in mail.outbox for address in message.to)


class TestRequestSubmitted:
    def test_the_clusters_admins_get_a_link_to_the_request(
        self, allocation, alice, dana, django_capture_on_commit_callbacks
    ):
        co_admin = make_user("ravi")
        allocation.cluster.admins.add(co_admin)

        with django_capture_on_commit_callbacks(execute=True):
            request = services.change_request_submit(
                actor=alice, allocation=allocation, su_delta="500", justification="A & B runs"
            )

        assert recipients() == ["dana@example.edu", "ravi@example.edu"]
        message = mail.outbox[0]
        assert message.subject == "[SU portal] New request for folding-gpu on gpu1"
        assert f"https://portal.example.edu/review/requests/{request.code}/" in message.body
        assert "+500.0000 SU" in message.body
        assert "A & B runs" in message.body  # plain text: nothing HTML-escaped

    def test_a_new_allocation_request_reaches_them_too(
        self, pending_request, django_capture_on_commit_callbacks, alice, project, cluster, gpu
    ):
        with django_capture_on_commit_callbacks(execute=True):
            services.allocation_request_create(
                actor=alice,
                project=project,
                cluster=cluster,
                name="second",
                resources=[gpu],
                su_amount="5",
                start=pending_request.allocation.start,
                end=pending_request.allocation.end,
                justification="More",
            )

        assert recipients() == ["dana@example.edu"]

    def test_nothing_is_sent_when_the_transaction_rolls_back(
        self, allocation, alice, django_capture_on_commit_callbacks
    ):
        with (
            django_capture_on_commit_callbacks(execute=True) as callbacks,
            pytest.raises(RuntimeError),
            transaction.atomic(),
        ):
            services.change_request_submit(
                actor=alice, allocation=allocation, su_delta="500", justification="Runs"
            )
            raise RuntimeError("something after the request failed")

        assert callbacks == []
        assert mail.outbox == []
        assert not ChangeRequest.objects.filter(kind="CHANGE").exists()

    def test_nothing_is_sent_before_the_commit(self, allocation, alice):
        services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="500", justification="Runs"
        )

        assert mail.outbox == []


@pytest.fixture
def submitted(allocation, bob, alice):
    """A change request by bob, made a manager so he may ask."""
    services.project_add_manager(actor=alice, project=allocation.project, user=bob)
    return services.change_request_submit(
        actor=bob, allocation=allocation, su_delta="500", justification="Runs"
    )


class TestRequestDecided:
    def test_an_approval_reaches_the_requester_and_the_pi_with_the_allocations_link(
        self, submitted, dana, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            services.change_request_approve(
                actor=dana, request=submitted, su_approved="200", reason="Half now"
            )

        assert recipients() == ["alice@example.edu", "bob@example.edu"]
        body = mail.outbox[0].body
        assert mail.outbox[0].subject == "[SU portal] Your request for folding-gpu was approved"
        assert "Granted:    +200.0000 SU (not the amount asked for)" in body
        assert "Half now" in body
        url = f"https://portal.example.edu/allocations/{submitted.allocation.code}/"
        assert url in body

    def test_a_rejection_carries_its_reason(
        self, submitted, dana, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            services.change_request_reject(actor=dana, request=submitted, reason="Over capacity")

        assert recipients() == ["alice@example.edu", "bob@example.edu"]
        assert "rejected" in mail.outbox[0].subject
        assert "Over capacity" in mail.outbox[0].body

    def test_the_pi_who_asked_gets_one_email(
        self, allocation, alice, dana, django_capture_on_commit_callbacks
    ):
        request = services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="5", justification="Runs"
        )
        with django_capture_on_commit_callbacks(execute=True):
            services.change_request_approve(actor=dana, request=request)

        assert recipients() == ["alice@example.edu"]

    def test_a_refused_approval_sends_nothing(
        self, submitted, dana, django_capture_on_commit_callbacks
    ):
        services.change_request_cancel(actor=submitted.requester, request=submitted)

        with django_capture_on_commit_callbacks(execute=True), pytest.raises(ValidationError):
            services.change_request_approve(actor=dana, request=submitted)

        assert mail.outbox == []


class TestCommentsAndCancellations:
    def test_an_admins_comment_reaches_the_requester_and_the_pi(
        self, submitted, dana, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            services.change_request_comment(actor=dana, request=submitted, text="Which runs?")

        assert recipients() == ["alice@example.edu", "bob@example.edu"]
        assert "Which runs?" in mail.outbox[0].body

    def test_a_comment_from_the_project_reaches_the_admins_and_not_its_author(
        self, submitted, bob, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            services.change_request_comment(actor=bob, request=submitted, text="The big ones")

        assert recipients() == ["alice@example.edu", "dana@example.edu"]
        to_dana = next(m for m in mail.outbox if m.to == ["dana@example.edu"])
        assert f"/review/requests/{submitted.code}/" in to_dana.body

    def test_a_cancellation_tells_the_admins(
        self, submitted, bob, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            services.change_request_cancel(actor=bob, request=submitted, reason="Not needed")

        assert recipients() == ["dana@example.edu"]
        assert "withdrew" in mail.outbox[0].body

    def test_people_without_an_address_or_inactive_are_skipped(
        self, submitted, dana, alice, bob, django_capture_on_commit_callbacks
    ):
        alice.is_active = False
        alice.save()
        bob.email = ""
        bob.save()

        with django_capture_on_commit_callbacks(execute=True):
            services.change_request_comment(actor=dana, request=submitted, text="Which runs?")

        assert mail.outbox == []


@pytest.mark.django_db(transaction=True)
def test_a_committed_request_is_emailed_for_real(alice, project, cluster, gpu, dana):
    """No captured callbacks: the e-mail goes out because the transaction commits."""
    services.allocation_request_create(
        actor=alice,
        project=project,
        cluster=cluster,
        name="committed",
        resources=[gpu],
        su_amount="5",
        start=project.created.date(),
        end=project.created.date(),
        justification="More",
    )

    assert recipients() == ["dana@example.edu"]


def test_nothing_is_sent_for_steps_written_while_muted(
    allocation, alice, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), notifications.muted():
        services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="5", justification="Demo"
        )

    assert mail.outbox == []


def test_a_mail_server_that_is_down_does_not_undo_or_break_the_decision(
    submitted, dana, django_capture_on_commit_callbacks, monkeypatch, caplog
):
    def refuse(self, messages):
        raise ConnectionRefusedError("smtp is down")

    monkeypatch.setattr("django.core.mail.backends.locmem.EmailBackend.send_messages", refuse)

    with django_capture_on_commit_callbacks(execute=True):
        services.change_request_reject(actor=dana, request=submitted, reason="Full")

    submitted.refresh_from_db()
    assert submitted.state == "REJECTED"
    assert "smtp is down" in caplog.text
