import pytest

from gradoctor.errors import UsageError
from gradoctor.memory.units import format_bytes, parse_batch_sizes, parse_bytes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10GiB", 10 * 2**30),
        ("10 gib", 10 * 2**30),
        ("512MB", 512 * 10**6),
        ("1.5KiB", 1536),
        ("2TB", 2 * 10**12),
        ("4096", 4096),
        ("7B", 7),
        (1024, 1024),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["10XB", "3 gigs", "5Gi"])
def test_unknown_unit_names_the_accepted_units(text):
    with pytest.raises(UsageError) as info:
        parse_bytes(text)
    assert info.value.exit_code == 2
    for unit in ("B", "KB", "MB", "GB", "KiB", "MiB", "GiB"):
        assert unit in str(info.value)


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "0"])
def test_unreadable_or_empty_sizes(text):
    with pytest.raises(UsageError):
        parse_bytes(text)


def test_parse_batch_sizes():
    assert parse_batch_sizes("32, 8,16,8") == [8, 16, 32]
    assert parse_batch_sizes(None) is None
    for bad in ("8,x", "0", ","):
        with pytest.raises(UsageError):
            parse_batch_sizes(bad)


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3 GiB"
    assert format_bytes(None) == "-"


def test_format_flops_decimal_units():
    from gradoctor.memory.units import format_flops

    assert format_flops(None) == "-"
    assert format_flops(0) == "0 FLOP"
    assert format_flops(999) == "999 FLOP"
    assert format_flops(5.03e7) == "50.3 MFLOP"
    assert format_flops(1.5e9) == "1.5 GFLOP"
    assert format_flops(250e12) == "250 TFLOP"
