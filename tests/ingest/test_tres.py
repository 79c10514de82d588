"""Slurm TRES strings: parse_tres and gpu_counts. Pure functions, no database."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocations.parsers import ParseError, gpu_counts, parse_tres

D = Decimal
MB_PER = {"": D(1), "K": D(1) / 1024, "M": D(1), "G": D(1024), "T": D(1024**2), "P": D(1024**3)}


class TestParseTres:
    def test_it_reads_a_sacct_alloc_tres(self):
        tres = parse_tres("billing=16,cpu=8,gres/gpu:h200=2,gres/gpu=2,mem=64G,node=1")

        assert tres == {
            "billing": D(16),
            "cpu": D(8),
            "gres/gpu:h200": D(2),
            "gres/gpu": D(2),
            "mem": D(65536),
            "node": D(1),
        }

    def test_it_reads_an_empty_string_as_no_resources(self):
        assert parse_tres("") == {}
        assert parse_tres("  \n") == {}

    @pytest.mark.parametrize(
        ("text", "mb"),
        [
            ("mem=32000M", "32000"),
            ("mem=1.50T", "1572864"),  # 1.5 * 1024 * 1024
            ("mem=16G", "16384"),
            ("mem=4000", "4000"),  # no suffix: already megabytes
            ("mem=512K", "0.5"),
            ("mem=1P", "1073741824"),
            ("mem=0", "0"),
        ],
    )
    def test_it_normalises_memory_to_megabytes_1024_based(self, text, mb):
        assert parse_tres(text)["mem"] == D(mb)

    def test_it_keeps_memory_exact_and_tidy(self):
        mem = parse_tres("mem=1.50T")["mem"]

        assert isinstance(mem, Decimal)
        assert str(mem) == "1572864"

    def test_it_scales_other_sizes_like_memory(self):
        tres = parse_tres("fs/disk=2G,bb/datawarp=1T,vmem=100M")

        assert tres == {"fs/disk": D(2048), "bb/datawarp": D(1048576), "vmem": D(100)}

    def test_it_keeps_both_gpu_keys(self):
        tres = parse_tres("gres/gpu=4,gres/gpu:h200=4")

        assert tres == {"gres/gpu": D(4), "gres/gpu:h200": D(4)}

    def test_it_reads_licenses_and_other_named_tres(self):
        tres = parse_tres("cpu=1,license/matlab@flexlm=2,gres/shard=8,energy=5412")

        assert tres["license/matlab@flexlm"] == D(2)
        assert tres["gres/shard"] == D(8)
        assert tres["energy"] == D(5412)

    @pytest.mark.parametrize(
        ("text", "says"),
        [
            ("cpu", "not name=value"),
            ("=4", "not name=value"),
            ("cpu=4,,mem=1G", "not name=value"),
            ("cpu=4,", "not name=value"),
            ("cpu 4", "not name=value"),
            ("cpu=four", "not a non-negative number"),
            ("cpu=-1", "not a non-negative number"),
            ("cpu=", "not a non-negative number"),
            ("mem=16GB", "not a non-negative number"),
            ("mem=16g", "not a non-negative number"),
            ("mem=1e3", "not a non-negative number"),
            ("mem=.5G", "not a non-negative number"),
            ("cpu=4K", "a count takes no unit suffix"),
            ("cpu=4,cpu=8", "appears twice"),
        ],
    )
    def test_it_rejects_bad_entries_with_a_clear_message(self, text, says):
        with pytest.raises(ParseError, match=says) as caught:
            parse_tres(text)

        assert caught.value.line is None  # a bare string has no line; parsers add theirs


class TestGpuCounts:
    def test_it_counts_typed_gpus_once(self):
        assert gpu_counts(parse_tres("gres/gpu=4,gres/gpu:h200=4")) == {"h200": D(4)}

    def test_it_reports_untyped_gpus_under_none(self):
        assert gpu_counts(parse_tres("cpu=8,gres/gpu=2")) == {None: D(2)}

    def test_it_splits_a_job_with_two_models(self):
        tres = parse_tres("gres/gpu=3,gres/gpu:a100=1,gres/gpu:h200=2")

        assert gpu_counts(tres) == {"a100": D(1), "h200": D(2)}

    def test_it_keeps_gpus_no_typed_entry_accounts_for(self):
        tres = parse_tres("gres/gpu=4,gres/gpu:h200=2")

        assert gpu_counts(tres) == {"h200": D(2), None: D(2)}

    def test_it_finds_no_gpus_in_a_cpu_job(self):
        assert gpu_counts(parse_tres("billing=4,cpu=4,mem=16G,node=1")) == {}

    def test_it_does_not_count_shards_as_gpus(self):
        assert gpu_counts(parse_tres("gres/shard=4,gres/gpu=1")) == {None: D(1)}


# Names as Slurm writes them; sizes get a random suffix, counts none.
count_names = st.sampled_from(
    ["cpu", "node", "billing", "energy", "gres/gpu", "gres/gpu:h200", "license/abaqus"]
) | st.from_regex(r"gres/[a-z][a-z0-9_]{0,8}(:[a-z0-9]{1,6})?", fullmatch=True)
amounts = st.decimals(min_value=0, max_value=10**9, places=2)


@given(
    counts=st.dictionaries(count_names, st.integers(0, 10**7), max_size=8),
    mem=st.none() | st.tuples(amounts, st.sampled_from(sorted(MB_PER))),
)
def test_it_round_trips_tres_strings(counts, mem):
    entries = [f"{name}={count}" for name, count in counts.items()]
    expected = {name: D(count) for name, count in counts.items()}
    if mem is not None:
        amount, suffix = mem
        entries.append(f"mem={amount:f}{suffix}")
        expected["mem"] = amount * MB_PER[suffix]

    assert parse_tres(",".join(entries)) == expected


@given(
    typed=st.dictionaries(st.sampled_from(["a100", "h100", "h200", "l40s"]), st.integers(0, 8)),
    total=st.none() | st.integers(0, 16),
)
def test_gpu_counts_count_every_gpu_exactly_once(typed, total):
    tres = {f"gres/gpu:{model}": D(n) for model, n in typed.items()}
    if total is not None:
        tres["gres/gpu"] = D(total)

    counts = gpu_counts(tres)

    assert sum(counts.values()) == max(total or 0, sum(typed.values()))
    assert all(n > 0 for n in counts.values())


@given(st.text(max_size=60))
def test_parse_tres_either_parses_or_raises_parse_error(text):
    try:
        tres = parse_tres(text)
    except ParseError:
        return
    assert all(isinstance(v, Decimal) and v >= 0 for v in tres.values())
