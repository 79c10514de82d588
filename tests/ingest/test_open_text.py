"""open_text: gzip by magic bytes, and a clear error for a broken file."""

import gzip
from pathlib import Path

import pytest

from allocations.parsers import ParseError, collect, open_text, parse_swf

SAMPLES = Path(__file__).parent / "samples"
NASA = SAMPLES / "nasa-head.swf"


@pytest.fixture
def nasa_gz(tmp_path) -> Path:
    path = tmp_path / "nasa-head.swf.gz"
    path.write_bytes(gzip.compress(NASA.read_bytes()))
    return path


class TestOpenText:
    def test_it_reads_plain_text(self):
        with open_text(NASA) as lines:
            assert next(lines) == "; Version: 2.2\n"

    def test_it_reads_gzip_by_its_magic_bytes_not_its_name(self, tmp_path, nasa_gz):
        disguised = tmp_path / "nasa.txt"
        disguised.write_bytes(nasa_gz.read_bytes())

        with open_text(disguised) as lines:
            result = collect(parse_swf(lines))

        assert len(result.records) == 218

    def test_it_reads_plain_text_named_gz(self, tmp_path):
        path = tmp_path / "plain.gz"
        path.write_text("JobIDRaw|JobID\n")

        with open_text(path) as lines:
            assert list(lines) == ["JobIDRaw|JobID\n"]

    def test_gzip_and_plain_give_the_same_jobs(self, nasa_gz):
        with open_text(NASA) as plain, open_text(nasa_gz) as unzipped:
            assert collect(parse_swf(plain)).records == collect(parse_swf(unzipped)).records

    def test_a_truncated_gzip_raises_naming_the_file(self, tmp_path, nasa_gz):
        truncated = tmp_path / "cut.swf.gz"
        truncated.write_bytes(nasa_gz.read_bytes()[: nasa_gz.stat().st_size // 2])

        with (
            pytest.raises(ParseError, match="truncated gzip") as caught,
            open_text(truncated) as lines,
        ):
            collect(parse_swf(lines))

        assert caught.value.where == str(truncated)
        assert str(caught.value).startswith(f"{truncated}: truncated gzip")

    def test_a_gzip_missing_only_its_trailer_is_still_truncated(self, tmp_path, nasa_gz):
        truncated = tmp_path / "no-trailer.gz"
        truncated.write_bytes(nasa_gz.read_bytes()[:-8])

        with pytest.raises(ParseError, match="truncated gzip"), open_text(truncated) as lines:
            list(lines)

    def test_a_corrupt_gzip_raises_naming_the_file(self, tmp_path, nasa_gz):
        corrupt = tmp_path / "corrupt.gz"
        data = bytearray(nasa_gz.read_bytes())
        data[40:60] = b"\xff" * 20
        corrupt.write_bytes(bytes(data))

        with pytest.raises(ParseError, match="corrupt gzip") as caught, open_text(corrupt) as lines:
            list(lines)

        assert str(corrupt) in str(caught.value)

    def test_it_replaces_bytes_that_are_not_utf8(self, tmp_path):
        path = tmp_path / "latin1.txt"
        path.write_bytes(b"caf\xe9\nnext\n")

        with open_text(path) as lines:
            assert list(lines) == ["caf\ufffd\n", "next\n"]


def test_tests_read_only_their_own_samples():
    """The project cannot read the workspace's shared data once installed elsewhere: no test
    may use it (the samples are copies, see samples/README.md)."""
    # Spelled in pieces so that this test does not find itself.
    outside = ["/".join(("", "shared", "data")), "/".join(("..", "shared"))]
    modules = list(Path(__file__).parent.glob("test_*.py"))
    assert len(modules) >= 5
    for module in modules:
        text = module.read_text()
        assert not [path for path in outside if path in text], module.name
