from django.core.management.base import BaseCommand, CommandError

from allocations.ledger import ledger_drift


class Command(BaseCommand):
    help = "Recomputes every maintained SU total from its records; exits non-zero on any drift."

    def handle(self, *args, **options):
        drifts = ledger_drift()
        for drift in drifts:
            self.stderr.write(str(drift))
        if drifts:
            raise CommandError(f"{len(drifts)} maintained totals drifted from their records.")
        self.stdout.write(self.style.SUCCESS("Ledger verified: every total equals its records."))
