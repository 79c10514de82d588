import os
import stat

import pytest
from django.core.management import CommandError, call_command

from accounts.models import ApiToken
from accounts.tokens import api_token_check


def issue(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("issue_token", *args, stdout=out)
    return out.getvalue().strip()


class TestIssueToken:
    def test_a_cluster_admin_gets_a_working_token_printed_once(self, cluster, dana):
        secret = issue("--cluster", cluster.name, "--by", "dana", "--name", "sacct importer")

        token = api_token_check(secret)
        assert (token.cluster, token.created_by, token.name) == (cluster, dana, "sacct importer")

    def test_the_token_file_is_private_and_holds_only_the_token(self, cluster, dana, tmp_path):
        path = tmp_path / "token"

        said = issue("--cluster", cluster.name, "--by", "dana", "--output", str(path))

        secret = path.read_text().strip()
        assert api_token_check(secret).cluster == cluster
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert secret not in said
        assert ApiToken.objects.get().prefix in said

    def test_an_existing_file_is_never_overwritten_and_no_token_is_issued(
        self, cluster, dana, tmp_path
    ):
        path = tmp_path / "token"
        path.write_text("keep me")

        with pytest.raises(CommandError, match="refusing to overwrite"):
            issue("--cluster", cluster.name, "--by", "dana", "--output", str(path))

        assert path.read_text() == "keep me"
        assert not ApiToken.objects.exists()

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_only_an_admin_of_the_cluster_may_issue(self, cluster, who, request):
        request.getfixturevalue(who)

        with pytest.raises(CommandError, match=f"Only admins of {cluster.name}"):
            issue("--cluster", cluster.name, "--by", who)

        assert not ApiToken.objects.exists()

    def test_a_superuser_may_issue(self, cluster, staff):
        assert api_token_check(issue("--cluster", cluster.name, "--by", staff.username))

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--cluster", "nowhere", "--by", "dana"], "no cluster named 'nowhere'"),
            (["--by", "ghost"], "no active user named 'ghost'"),
        ],
    )
    def test_unknown_names_are_clear_errors(self, cluster, dana, args, message):
        if "--cluster" not in args:
            args = ["--cluster", cluster.name, *args]

        with pytest.raises(CommandError, match=message):
            issue(*args)

        assert not ApiToken.objects.exists()
