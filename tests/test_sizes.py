"""Size parsing for --max_memory / --max_shard_size, log formatting and the free-RAM reading."""

from __future__ import annotations

import pytest

from signround.errors import BadInputError
from signround.sizes import _cgroup_available, available_memory, format_size, parse_size


@pytest.mark.parametrize("text, expected", [
    ("5GB", 5 * 10**9),
    ("5GiB", 5 * 2**30),
    ("512MB", 512 * 10**6),
    ("300KiB", 300 * 2**10),
    ("1.5GB", 1_500_000_000),
    ("1.1GB", 1_100_000_000),
    ("1000000", 1_000_000),
    (1000000, 1_000_000),
    (0, 0),
    ("5gb", 5 * 10**9),
    ("5gib", 5 * 2**30),
    ("2 TiB", 2 * 2**40),
    ("64B", 64),
    (" 7kb ", 7000),
    ("1.5B", 1),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "5XB", "-5GB", "1e9", "5 G B", "five GB", "5GB5", -1, 5.0, True, None])
def test_parse_size_rejects_and_names_the_text(text):
    with pytest.raises(BadInputError, match="expected a byte count") as info:
        parse_size(text)
    assert repr(text) in str(info.value) or str(text) in str(info.value)


@pytest.mark.parametrize("n, expected", [
    (0, "0 B"), (12, "12 B"), (1536, "1.5 KiB"), (512 * 2**20, "512.0 MiB"), (3 * 2**29, "1.50 GiB"),
    (3 * 2**40, "3.00 TiB"),
])
def test_format_size(n, expected):
    assert format_size(n) == expected


def test_available_memory_is_positive():
    assert 0 < available_memory() < 2**50


def test_cgroup_limit_counts_reclaimable_page_cache(tmp_path):
    assert _cgroup_available(tmp_path) is None  # no limit files: no cap
    (tmp_path / "memory.max").write_text("max\n")
    assert _cgroup_available(tmp_path) is None
    (tmp_path / "memory.max").write_text("1000\n")
    (tmp_path / "memory.current").write_text("700\n")
    (tmp_path / "memory.stat").write_text("anon 500\ninactive_file 100\nactive_file 100\n")
    assert _cgroup_available(tmp_path) == 400
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))
    assert _cgroup_available(v1) is None  # v1 writes a huge number for no limit
    (v1 / "memory" / "memory.limit_in_bytes").write_text("2000")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("2500")
    assert _cgroup_available(v1) == 0
