from pathlib import Path

import pytest
from django.core.checks import Error
from django.core.exceptions import ImproperlyConfigured

from allocations.apps import check_settings
from portal.env import database_from_url, envbool, envint, envlist, envsecret


class TestEnvHelpers:
    def test_it_reads_booleans(self, monkeypatch):
        for raw, expected in [
            ("1", True),
            ("yes", True),
            ("On", True),
            ("0", False),
            ("off", False),
        ]:
            monkeypatch.setenv("FLAG", raw)
            assert envbool("FLAG", not expected) is expected

    def test_it_uses_the_default_when_unset(self, monkeypatch):
        monkeypatch.delenv("FLAG", raising=False)
        assert envbool("FLAG", True) is True
        assert envint("NUM", 7) == 7
        assert envlist("HOSTS", ["a"]) == ["a"]

    def test_it_names_the_variable_on_junk(self, monkeypatch):
        monkeypatch.setenv("FLAG", "maybe")
        with pytest.raises(ImproperlyConfigured, match="FLAG"):
            envbool("FLAG", False)
        monkeypatch.setenv("NUM", "ten")
        with pytest.raises(ImproperlyConfigured, match="NUM must be a whole number"):
            envint("NUM", 1)

    def test_it_splits_lists(self, monkeypatch):
        monkeypatch.setenv("HOSTS", "portal.example.edu, ,localhost")
        assert envlist("HOSTS", []) == ["portal.example.edu", "localhost"]

    def test_it_reads_secrets_from_files(self, monkeypatch, tmp_path):
        secret = tmp_path / "key"
        secret.write_text("s3cret\n")
        monkeypatch.setenv("SECRET_KEY_FILE", str(secret))
        assert envsecret("SECRET_KEY") == "s3cret"
        monkeypatch.setenv("SECRET_KEY_FILE", str(tmp_path / "missing"))
        with pytest.raises(ImproperlyConfigured, match="SECRET_KEY_FILE"):
            envsecret("SECRET_KEY")


class TestDatabaseUrl:
    def test_it_reads_postgres_urls(self):
        db = database_from_url(
            "postgres://portal:p%40ss@db.example.edu:5433/su", base_dir=Path("/x")
        )
        assert db["ENGINE"] == "django.db.backends.postgresql"
        assert (db["NAME"], db["USER"], db["PASSWORD"]) == ("su", "portal", "p@ss")
        assert (db["HOST"], db["PORT"]) == ("db.example.edu", "5433")
        assert db["OPTIONS"]["prepare_threshold"] == 0

    def test_preparing_can_be_turned_off(self, monkeypatch):
        monkeypatch.setenv("DATABASE_PREPARED_STATEMENTS", "0")
        db = database_from_url("postgres://portal@db/su", base_dir=Path("/x"))
        assert db["OPTIONS"]["prepare_threshold"] is None

    def test_it_resolves_relative_sqlite_paths(self, tmp_path):
        db = database_from_url("sqlite:///var/x.sqlite3", base_dir=tmp_path)
        assert db["NAME"] == str(tmp_path / "var" / "x.sqlite3")
        assert (tmp_path / "var").is_dir()

    def test_it_keeps_absolute_sqlite_paths(self, tmp_path):
        db = database_from_url(f"sqlite:///{tmp_path}/abs.sqlite3", base_dir=Path("/elsewhere"))
        assert db["NAME"] == str(tmp_path / "abs.sqlite3")

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("mysql://root@localhost/db", "not supported"),
            ("postgres://localhost", "names no database"),
            ("postgres://localhost:notaport/db", "invalid port"),
            ("sqlite://", "names no SQLite file"),
        ],
    )
    def test_it_refuses_bad_urls(self, url, message):
        with pytest.raises(ImproperlyConfigured, match=message):
            database_from_url(url, base_dir=Path("/x"))


class TestSystemChecks:
    def test_it_accepts_the_default_settings(self, settings):
        settings.DEBUG = True
        assert check_settings(None) == []

    def test_it_refuses_a_time_zone_other_than_utc(self, settings):
        settings.TIME_ZONE = "Europe/Paris"
        assert "portal.E001" in [p.id for p in check_settings(None) if isinstance(p, Error)]

    def test_it_refuses_a_broker_url_of_unknown_kind(self, settings):
        settings.CELERY_BROKER_URL = "kafka://localhost"
        assert "portal.E003" in [p.id for p in check_settings(None)]

    def test_it_warns_when_production_runs_tasks_inline(self, settings):
        settings.DEBUG = False
        settings.CELERY_BROKER_URL = ""
        assert [p.id for p in check_settings(None)] == ["portal.W001"]


class TestSettingsModule:
    def _import_settings(self, **env):
        import os
        import subprocess
        import sys

        clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
        return subprocess.run(
            [sys.executable, "-c", "import portal.settings"],
            env={**clean, **env},
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )

    def test_it_requires_a_secret_key_when_debug_is_off(self):
        result = self._import_settings(DEBUG="0")
        assert result.returncode != 0
        assert "SECRET_KEY must be set when DEBUG is off" in result.stderr

    def test_it_starts_with_a_secret_key(self):
        assert self._import_settings(DEBUG="0", SECRET_KEY="k" * 50).returncode == 0
