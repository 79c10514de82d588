import pytest
from django.core.exceptions import ValidationError

from accounts.models import Organization
from accounts.services import organization_create, user_create
from tests.allocations.dbstate import unchanged


class TestOrganizationCreate:
    def test_it_creates_an_organization(self, db):
        org = organization_create(name="  State University ", originated_id=" ror:05x2 ")

        org.refresh_from_db()
        assert (org.name, org.originated_id) == ("State University", "ror:05x2")
        assert org.code is not None

    def test_it_refuses_a_name_taken_in_another_case(self, org):
        with unchanged(), pytest.raises(ValidationError):
            organization_create(name="STATE UNIVERSITY")

    def test_it_refuses_an_originated_id_already_taken(self, db):
        organization_create(name="One", originated_id="ror:1")
        with unchanged(), pytest.raises(ValidationError):
            organization_create(name="Two", originated_id="ror:1")

    def test_organizations_without_an_originated_id_may_repeat_it(self, db):
        organization_create(name="One")
        organization_create(name="Two")

        assert Organization.objects.filter(originated_id="").count() == 2

    def test_it_refuses_an_empty_name(self, db):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            organization_create(name="  ")
        assert "name" in excinfo.value.message_dict


class TestUserCreate:
    def test_it_creates_a_user_who_signs_in_with_the_password(self, org):
        user = user_create(
            username=" erin ",
            email=" Erin@Example.EDU ",
            password="correct horse battery staple",
            first_name=" Erin ",
            last_name="Ellis",
            organization=org,
            originated_id="cilogon:42",
        )

        user.refresh_from_db()
        assert (user.username, user.email, user.first_name, user.organization) == (
            "erin",
            "Erin@example.edu",
            "Erin",
            org,
        )
        assert user.check_password("correct horse battery staple")
        assert not (user.is_staff or user.is_superuser)

    def test_without_a_password_the_account_cannot_sign_in_with_one(self, db):
        user = user_create(username="importer", email="importer@example.edu")

        assert not user.has_usable_password()

    def test_it_creates_staff(self, db):
        user = user_create(username="ops", email="ops@example.edu", is_staff=True)

        assert (user.is_staff, user.is_superuser) == (True, False)

    def test_it_refuses_an_email_taken_in_another_case(self, alice):
        with unchanged(), pytest.raises(ValidationError, match="e-mail address already exists"):
            user_create(username="alice2", email="ALICE@example.edu")

    def test_it_refuses_a_username_taken(self, alice):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            user_create(username="alice", email="other@example.edu")
        assert "username" in excinfo.value.message_dict

    @pytest.mark.parametrize("email", ["", "not-an-address"])
    def test_it_refuses_a_missing_or_malformed_email(self, db, email):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            user_create(username="frank", email=email)
        assert "email" in excinfo.value.message_dict

    def test_it_refuses_a_username_schedulers_cannot_use(self, db):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            user_create(username="frank smith", email="frank@example.edu")
        assert "username" in excinfo.value.message_dict
