"""What the programs beside Slurm (su_importer.py, su_sync.py) share: the token file, talking
to the portal with retries and backoff, errors with exit statuses, and their common options.

Python standard library only (3.8+); copy it to the Slurm host next to the programs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

__version__ = "1.1"

EXIT_OK, EXIT_FAILURE, EXIT_REJECTED, EXIT_AUTH, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


class Failure(Exception):
    """Stops the run with a message and an exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except FileNotFoundError:
        message = f"token file {path} does not exist: put the cluster's importer token in it"
        raise Failure(message) from None
    except OSError as exc:
        raise Failure(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise Failure(f"token file {path} is empty")
    if any(c.isspace() for c in token):
        raise Failure(f"token file {path} holds more than one word; it should hold the token only")
    return token


def add_portal_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--portal", required=True, help="https://portal.example.edu")
    parser.add_argument("--cluster", required=True, help="the cluster's name in the portal")
    parser.add_argument("--token-file", required=True, help="file holding the importer token")
    parser.add_argument("--timeout", type=float, default=120, help="HTTP timeout, seconds")
    parser.add_argument("--retries", type=int, default=5, help="attempts per request (default 5)")
    parser.add_argument("--backoff", type=float, default=2, help="first retry delay, seconds")
    parser.add_argument("--max-backoff", type=float, default=60, help="longest retry delay")


def check_portal_options(args: argparse.Namespace) -> None:
    if args.retries < 1 or args.backoff < 0:
        raise Failure("--retries must be at least 1 and --backoff not negative")
    if not args.portal.startswith(("https://", "http://")):
        raise Failure(f"--portal {args.portal!r} is not an https:// (or http://) URL")


def portal_url(args: argparse.Namespace, path: str) -> str:
    return args.portal.rstrip("/") + path


def request_json(
    method: str, url: str, token: str, body: dict | None, args: argparse.Namespace, agent: str
) -> tuple[int, object]:
    """Sends with retries (connection errors, 5xx, 429); returns (status, parsed body)."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "User-Agent": f"{agent}/{__version__}",
    }
    if data is not None:
        headers["Content-Type"] = "application/json"
    delay = args.backoff
    for attempt in range(1, args.retries + 1):
        # The URL is http(s), checked by check_portal_options.
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=args.timeout) as response:  # noqa: S310
                return response.status, _json(response.read())
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, _json(exc.read())
            if status != 429 and status < 500:
                return status, answer
            problem = f"HTTP {status} {detail(answer)}".strip()
            retry_after = exc.headers.get("Retry-After", "") if exc.headers else ""
            wait = float(retry_after) if retry_after.isdigit() else delay
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            problem, wait = f"cannot reach {url}: {reason}", delay
        if attempt == args.retries:
            code = EXIT_FAILURE if problem.startswith("HTTP") else EXIT_UNREACHABLE
            raise Failure(f"{problem} (gave up after {attempt} attempts)", code)
        wait = min(wait, args.max_backoff)
        log(f"{problem}; attempt {attempt} of {args.retries}, retrying in {wait:g} s")
        time.sleep(wait)
        delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def refused_token(status: int, answer: object, args: argparse.Namespace) -> Failure:
    """The error for a 401 or 403 answer: what it means and what to do."""
    hint = (
        "the token is wrong or revoked"
        if status == 401
        else f"the token may not act for cluster {args.cluster}"
    )
    return Failure(
        f"the portal refused the token (HTTP {status}: {detail(answer)}): {hint}; "
        f"issue a new importer token for {args.cluster} and put it in {args.token_file}",
        EXIT_AUTH,
    )


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return raw.decode("utf-8", "replace")[:500]


def detail(answer: object) -> str:
    if isinstance(answer, dict):
        text = answer.get("detail")
        return str(text) if text is not None else json.dumps(answer)[:500]
    return str(answer or "")
