from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from django.apps import apps
        from django.db.models.signals import post_migrate

        from accounts import (
            schema,  # noqa: F401 (registers the token's OpenAPI scheme)
            signals,
        )
        from accounts.roles import sync_after_migrate

        signals.connect()
        # After the last app's migrations, when every permission row exists.
        post_migrate.connect(
            sync_after_migrate,
            sender=apps.get_app_config("allocations"),
            dispatch_uid="accounts-cluster-admins-group",
        )
