"""Prepares the live server that schemathesis probes: an importer token for one
cluster and a signed-in session of one PI, and for each the public ids it must never
see (allocations, projects, clusters and holds outside its scope).

Run as: python manage.py shell -c "exec(open('.ci/fuzz_setup.py').read())" with
FUZZ_DIR set; writes token, session and forbidden-*.txt files there."""

import os
from pathlib import Path

from django.test import Client

from accounts.models import User
from accounts.tokens import api_token_issue
from allocations.models import Allocation, Cluster, Hold, Project
from allocations.selectors import allocation_list_for

out = Path(os.environ["FUZZ_DIR"])
cluster = Cluster.objects.filter(admins__isnull=False).order_by("name").first()
admin = cluster.admins.order_by("pk").first()
issued = api_token_issue(actor=admin, cluster=cluster, name="schemathesis")
(out / "token").write_text(issued.secret)


def public_ids(allocations) -> set[str]:
    allocations = list(allocations)
    ids = {str(a.code) for a in allocations}
    ids |= {str(a.project.code) for a in allocations}
    ids |= {str(a.cluster.code) for a in allocations}
    ids |= {str(h.code) for h in Hold.objects.filter(allocation__in=allocations)}
    return ids


everything = public_ids(Allocation.objects.select_related("project", "cluster"))
everything |= {str(p.code) for p in Project.objects.all()}
everything |= {str(c.code) for c in Cluster.objects.all()}
# A token sees its cluster's allocations (and their projects); holds on its cluster.
token_sees = public_ids(
    Allocation.objects.filter(cluster=cluster).select_related("project", "cluster")
)
token_sees |= {str(h.code) for h in Hold.objects.filter(cluster=cluster)}
(out / "forbidden-token.txt").write_text("\n".join(sorted(everything - token_sees)))
# For the check's own test: ids the token does see, which it must then report.
(out / "visible-token.txt").write_text("\n".join(sorted(token_sees)))

pi = (
    User.objects.filter(pi_projects__allocations__isnull=False, is_superuser=False)
    .exclude(administered_clusters__isnull=False)
    .order_by("username")
    .first()
)
pi_sees = public_ids(allocation_list_for(user=pi))
(out / "forbidden-session.txt").write_text("\n".join(sorted(everything - pi_sees)))
client = Client()
client.force_login(pi)
(out / "session").write_text(client.cookies["sessionid"].value)
print(f"token for {cluster.name}; session of {pi.username}")
