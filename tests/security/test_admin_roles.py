"""In the admin, roles are handed out by site admins only, and acts done there are
audited with the address they came from."""

from django.urls import reverse

from accounts.models import AuditEvent
from accounts.roles import cluster_admins_group
from tests.conftest import make_user


def as_cluster_admin(client, dana):
    dana.is_staff = True
    dana.save()
    dana.groups.add(cluster_admins_group())
    client.force_login(dana)


class TestRolesInTheAdmin:
    def test_a_cluster_admin_cannot_name_more_admins(self, client, cluster, dana, charlie):
        as_cluster_admin(client, dana)
        url = reverse("admin:allocations_cluster_change", args=[cluster.pk])
        assert client.get(url).status_code == 200

        client.post(
            url,
            {
                "name": cluster.name,
                "title": "Renamed",
                "su_per_billing_unit_hour": "1",
                "admins": [charlie.pk],
            },
        )

        cluster.refresh_from_db()
        assert cluster.title == "Renamed"
        assert list(cluster.admins.all()) == [dana]

    def test_staff_who_may_edit_users_cannot_grant_roles(self, client, org, charlie):
        from django.contrib.auth.models import Permission

        editor = make_user("editor", org, is_staff=True)
        editor.user_permissions.set(
            Permission.objects.filter(codename__in=["view_user", "change_user"])
        )
        client.force_login(editor)
        url = reverse("admin:accounts_user_change", args=[editor.pk])
        form = client.get(url).context["adminform"].form
        assert {"is_superuser", "is_staff", "groups", "user_permissions"}.isdisjoint(form.fields)

        client.post(
            url,
            {
                "username": "editor",
                "email": editor.email,
                "is_active": "on",
                "is_staff": "on",
                "is_superuser": "on",
                "date_joined_0": "2026-01-01",
                "date_joined_1": "00:00:00",
            },
        )

        editor.refresh_from_db()
        assert not editor.is_superuser

    def test_a_token_issued_in_the_admin_is_audited_with_the_address(self, client, cluster, dana):
        as_cluster_admin(client, dana)
        response = client.post(
            reverse("admin:accounts_apitoken_add"),
            {"cluster": cluster.pk, "name": "sacct"},
            REMOTE_ADDR="203.0.113.9",
        )
        assert response.status_code == 200  # the page that shows the secret once
        event = AuditEvent.objects.get(action="TOKEN_ISSUED")
        assert (event.actor, event.ip, event.details["cluster"]) == (dana, "203.0.113.9", "gpu1")
        assert response.context["secret"] not in str(event.details)
