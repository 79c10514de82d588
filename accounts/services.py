from django.db import transaction

from accounts.models import Organization, User


@transaction.atomic
def organization_create(*, name: str, originated_id: str = "") -> Organization:
    organization = Organization(name=name.strip(), originated_id=originated_id.strip())
    organization.full_clean()
    organization.save()
    return organization


@transaction.atomic
def user_create(
    *,
    username: str,
    email: str,
    password: str | None = None,
    first_name: str = "",
    last_name: str = "",
    organization: Organization | None = None,
    originated_id: str = "",
    is_staff: bool = False,
    is_superuser: bool = False,
) -> User:
    """Creates a local account. Without a password the account cannot sign in with
    one (it is for people who sign in through the institution, or are only charged)."""
    user = User(
        username=username.strip(),
        email=User.objects.normalize_email(email.strip()),
        first_name=first_name.strip(),
        last_name=last_name.strip(),
        organization=organization,
        originated_id=originated_id.strip(),
        is_staff=is_staff,
        is_superuser=is_superuser,
    )
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean()
    user.save()
    return user
