from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from allocations import services
from allocations.models import Allocation, Membership
from tests.conftest import usage


@pytest.fixture
def charged(allocation, alice, bob, gpu, cpu):
    services.usage_record_batch(
        cluster=allocation.cluster,
        records=[
            usage(allocation, bob, gpu, "1", 10),
            usage(allocation, alice, gpu, "2", "1.5"),
            usage(allocation, alice, cpu, "2", 100),
        ],
    )
    return allocation


class TestVerifyLedger:
    def test_it_passes_when_totals_equal_their_records(self, charged, capsys):
        call_command("verify_ledger")
        assert "Ledger verified" in capsys.readouterr().out

    def test_it_reports_a_drifted_allocation_budget(self, charged):
        Allocation.objects.filter(pk=charged.pk).update(su_budget=Decimal("999"))
        with pytest.raises(CommandError, match="2 maintained totals drifted"):
            call_command("verify_ledger")

    def test_it_reports_drifted_usage_totals(self, charged, bob, capsys):
        Allocation.objects.filter(pk=charged.pk).update(su_used=Decimal("0"))
        Membership.objects.filter(allocation=charged, user=bob).update(su_used=Decimal("1"))
        with pytest.raises(CommandError, match="2 maintained totals drifted"):
            call_command("verify_ledger")
        err = capsys.readouterr().err
        assert "su_used is 0.0000, records say 24.0000" in err
        assert "su_used is 1.0000, records say 20.0000" in err
