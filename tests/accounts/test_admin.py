from types import SimpleNamespace

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import ApiToken, Organization, User
from accounts.tokens import api_token_check, api_token_issue
from tests.allocations.dbstate import unchanged
from tests.conftest import make_user

ROWS = {
    Organization: lambda w, i: Organization(name=f"University {i}", originated_id=f"org-{i}"),
    User: lambda w, i: User(username=f"user{i}", email=f"user{i}@example.edu", organization=w.org),
    ApiToken: lambda w, i: ApiToken(
        cluster=w.cluster, name=f"importer {i}", prefix=f"p{i}", hashed="x", created_by=w.dana
    ),
}


def url(model, view: str, *args) -> str:
    return reverse(f"admin:accounts_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def superuser(org):
    return make_user("super", org, is_staff=True, is_superuser=True)


@pytest.fixture
def signed_in(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def world(org, cluster, dana):
    return SimpleNamespace(org=org, cluster=cluster, dana=dana)


def changelist_queries(client, model) -> tuple[list[str], int]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url(model, "changelist"))
    assert response.status_code == 200
    return [q["sql"] for q in queries.captured_queries], len(response.context["cl"].result_list)


class TestAccountsAdmin:
    @pytest.mark.parametrize("model", ROWS, ids=lambda model: model.__name__)
    def test_it_runs_as_many_queries_for_50_rows_as_for_2(self, signed_in, world, model):
        model.objects.bulk_create([ROWS[model](world, i) for i in range(2)])
        signed_in.get(url(model, "changelist"))  # warm per-process caches (content types)
        few, _ = changelist_queries(signed_in, model)
        model.objects.bulk_create([ROWS[model](world, i) for i in range(2, 50)])
        many, shown = changelist_queries(signed_in, model)
        assert shown >= 50
        assert len(many) == len(few), "\n".join(
            [f"{len(few)} queries for 2 rows:", *few, f"{len(many)} for 50:", *many]
        )

    @pytest.mark.parametrize("model", ROWS, ids=lambda model: model.__name__)
    def test_it_has_no_delete_action_and_refuses_the_delete_view(self, signed_in, world, model):
        obj = ROWS[model](world, 0)
        obj.save()
        response = signed_in.get(url(model, "changelist"))
        action_form = response.context["action_form"]
        actions = [name for name, _ in action_form.fields["action"].choices] if action_form else []
        assert "delete_selected" not in actions
        with unchanged():
            assert signed_in.get(url(model, "delete", obj.pk)).status_code == 403
            assert signed_in.post(url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403

    def test_it_adds_a_user_with_an_organization(self, signed_in, org):
        response = signed_in.post(
            url(User, "add"),
            {
                "username": "erin",
                "email": "erin@example.edu",
                "first_name": "Erin",
                "last_name": "Evans",
                "organization": org.pk,
                "originated_id": "cilogon-42",
                "usable_password": "true",
                "password1": "a-long-passphrase-42",
                "password2": "a-long-passphrase-42",
            },
        )
        assert response.status_code == 302
        erin = User.objects.get(username="erin")
        assert (erin.organization, erin.originated_id) == (org, "cilogon-42")
        assert erin.check_password("a-long-passphrase-42")

    def test_it_refuses_an_email_taken_in_another_case(self, signed_in, alice):
        with unchanged():
            response = signed_in.post(
                url(User, "add"),
                {
                    "username": "alice2",
                    "email": "ALICE@example.edu",
                    "usable_password": "false",
                },
            )
        assert response.status_code == 200
        assert response.context["adminform"].form.errors == {
            "__all__": ["A user with this e-mail address already exists."]
        }

    def test_it_edits_the_institution_and_shows_the_code(self, signed_in, alice):
        page = signed_in.get(url(User, "change", alice.pk))
        form = page.context["adminform"].form
        assert {"organization", "originated_id"} <= set(form.fields)
        assert "code" not in form.fields
        assert str(alice.code) in page.content.decode()


class TestApiTokenAdmin:
    def test_it_shows_the_secret_once_and_keeps_only_its_hash(self, signed_in, superuser, cluster):
        response = signed_in.post(url(ApiToken, "add"), {"cluster": cluster.pk, "name": "sacct"})

        assert response.status_code == 200
        secret = response.context["secret"]
        token = ApiToken.objects.get()
        assert (token.name, token.created_by) == ("sacct", superuser)
        assert api_token_check(secret) == token
        assert secret not in str(ApiToken.objects.values().get())
        page = signed_in.get(url(ApiToken, "change", token.pk)).content.decode()
        assert secret not in page

    def test_it_revokes_through_the_service(self, signed_in, superuser, cluster, dana):
        issued = api_token_issue(actor=dana, cluster=cluster, name="sacct")
        response = signed_in.post(
            url(ApiToken, "changelist"),
            {"action": "revoke", "_selected_action": [issued.token.pk]},
        )
        assert [str(m) for m in get_messages(response.wsgi_request)] == ["Revoked 1 api token."]
        issued.token.refresh_from_db()
        assert issued.token.revoked_by == superuser
        assert api_token_check(issued.secret) is None

    def test_it_never_edits_a_token(self, signed_in, cluster, dana):
        token = api_token_issue(actor=dana, cluster=cluster, name="sacct").token
        with unchanged():
            response = signed_in.post(url(ApiToken, "change", token.pk), {"name": "other"})
        assert response.status_code == 403
