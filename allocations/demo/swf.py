"""A small reader for the Standard Workload Format (SWF) of the Parallel Workloads Archive.

A file is a `;` comment header ("; Key: value" lines) and one job per line with 18
whitespace-separated fields; -1 means unknown. Only the fields the demo uses are kept.
"""

import gzip
from dataclasses import dataclass
from pathlib import Path

FIELDS = 18


@dataclass(frozen=True)
class Job:
    number: int  # field 1
    submit: int  # field 2: seconds after the header's UnixStartTime
    wait: int  # field 3
    run: int  # field 4: wall-clock seconds
    procs: int  # field 5: allocated processors
    status: int  # field 11
    user: int  # field 12
    group: int  # field 13
    queue: int  # field 15

    def start(self, origin: int) -> int:
        # A few logged waits are negative; a job cannot start before it was submitted.
        return origin + self.submit + max(self.wait, 0)

    def end(self, origin: int) -> int:
        return self.start(origin) + self.run


@dataclass(frozen=True)
class Trace:
    header: tuple[str, ...]
    jobs: tuple[Job, ...]

    def field(self, name: str) -> str | None:
        """The value of the first "; name: value" header line."""
        prefix = f"{name}:"
        for line in self.header:
            text = line.lstrip(";").strip()
            if text.startswith(prefix):
                return text[len(prefix) :].strip()
        return None

    @property
    def origin(self) -> int:
        value = self.field("UnixStartTime")
        if value is None:
            raise ValueError("The SWF header has no UnixStartTime.")
        return int(value)


def parse_swf(lines) -> Trace:
    header: list[str] = []
    jobs: list[Job] = []
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip("\n")
        if line.startswith(";"):
            header.append(line)
            continue
        fields = line.split()
        if not fields:
            continue
        if len(fields) != FIELDS:
            raise ValueError(f"line {lineno}: {len(fields)} fields, an SWF job has {FIELDS}")
        # Field 6 (average CPU time) may be fractional; the ones kept are integers.
        f = [int(fields[i]) for i in (0, 1, 2, 3, 4, 10, 11, 12, 14)]
        jobs.append(Job(*f))
    return Trace(header=tuple(header), jobs=tuple(jobs))


def read_swf(path: Path) -> Trace:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="ascii") as lines:
        return parse_swf(lines)
