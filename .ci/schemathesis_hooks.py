"""Schemathesis check: no answer to one caller contains a public id outside that
caller's scope (FUZZ_FORBIDDEN names the file listing them, one per line)."""

import os
from pathlib import Path

import schemathesis

_FORBIDDEN = frozenset(Path(os.environ["FUZZ_FORBIDDEN"]).read_text().split())


@schemathesis.check
def no_foreign_public_ids(ctx, response, case):
    body = response.content.decode("utf-8", errors="replace")
    leaked = sorted(code for code in _FORBIDDEN if code in body)
    if leaked:
        raise AssertionError(
            f"the answer shows public ids outside the caller's scope: {leaked[:5]}"
        )
