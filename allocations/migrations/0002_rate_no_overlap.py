"""Rate windows of one resource never overlap, held by PostgreSQL itself.

An exclusion constraint has no SQLite equivalent, so it is installed only on
PostgreSQL; services.rate_add checks the same rule on every database (and gives the
clear message); this constraint is what stops a writer that bypasses the service.
"""

from django.db import migrations

CREATE = """
CREATE EXTENSION IF NOT EXISTS btree_gist;
ALTER TABLE allocations_rate ADD CONSTRAINT allocations_rate_no_overlap
    EXCLUDE USING gist (resource_id WITH =, tstzrange(start, "end", '[)') WITH &&);
"""
DROP = "ALTER TABLE allocations_rate DROP CONSTRAINT IF EXISTS allocations_rate_no_overlap;"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("allocations", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
