from django.core.management.base import BaseCommand, CommandError

from allocations.rollups import rollups_drift, rollups_refresh_all


class Command(BaseCommand):
    help = (
        "Recomputes the daily usage rollups from the usage records and reports every "
        "difference; exits non-zero on any. With --repair, rebuilds them first."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--repair", action="store_true", help="Rebuild every rollup row before checking."
        )

    def handle(self, *args, repair: bool = False, **options):
        if repair:
            written = rollups_refresh_all()
            self.stdout.write(f"Rebuilt {written} rollup rows.")
        drifts = rollups_drift()
        for drift in drifts[:100]:
            self.stderr.write(str(drift))
        if drifts:
            raise CommandError(
                f"{len(drifts)} rollup rows differ from the usage records; "
                "run verify_rollups --repair."
            )
        self.stdout.write(self.style.SUCCESS("Rollups verified: every row equals its records."))
