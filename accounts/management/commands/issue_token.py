"""issue_token: an importer token for a cluster, from the shell of the portal's host.

The same service as the admin's "issue token" page, for sites that script their set-up. The
token is written once, to --output (created 0600, never overwritten) or to stdout, and is
never stored in clear.
"""

import os

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from accounts.tokens import api_token_issue
from allocations.models import Cluster


class Command(BaseCommand):
    help = (
        "Issues an importer API token for a cluster on behalf of one of its admins (--by), and "
        "prints it once, or writes it to --output with mode 0600. Revoke it in the admin."
    )

    def add_arguments(self, parser):
        parser.add_argument("--cluster", required=True, help="The cluster's name (e.g. gpu1).")
        parser.add_argument(
            "--by",
            required=True,
            metavar="USERNAME",
            help="The admin of the cluster (or superuser) issuing it; recorded on the token.",
        )
        parser.add_argument("--name", default="importer", help="What the token is for.")
        parser.add_argument(
            "--output",
            metavar="FILE",
            help="Write the token to this new file (mode 0600) instead of printing it.",
        )

    def handle(self, *args, cluster, by, name, output, **options):
        target = Cluster.objects.filter(name=cluster).first()
        if target is None:
            raise CommandError(f"There is no cluster named {cluster!r}.")
        actor = User.objects.filter(username=by, is_active=True).first()
        if actor is None:
            raise CommandError(f"There is no active user named {by!r}.")
        if output and os.path.exists(output):
            # Checked before issuing, so a refusal leaves no orphan token behind.
            raise CommandError(f"{output} exists; refusing to overwrite a token file.")
        try:
            issued = api_token_issue(actor=actor, cluster=target, name=name)
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        if not output:
            self.stdout.write(issued.secret)
            return
        try:
            # O_EXCL: a file that appeared meanwhile is not overwritten either.
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise CommandError(
                f"cannot write {output}: {exc.strerror or exc}; token {issued.token.prefix} "
                "was issued and is unusable without its secret: revoke it in the admin."
            ) from None
        with os.fdopen(fd, "w") as out:
            out.write(issued.secret + "\n")
        self.stdout.write(
            f"Token {issued.token.prefix} ({issued.token.name}) for {target.name} written to "
            f"{output}."
        )
