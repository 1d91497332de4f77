"""Spatial sizes as options give them: one reader for --tile, --block and fine_tune.crop."""

from __future__ import annotations

import pytest

from ebai.core.errors import InputError
from ebai.core.specs import parse_sizes


@pytest.mark.parametrize("value", ["16,48,48", "16x48x48", " 16, 48 ,48", [16, 48, 48], (16, 48, 48)])
def test_every_spelling_gives_the_same_sizes(value):
    assert parse_sizes(value, "--block", 3) == (16, 48, 48)


@pytest.mark.parametrize(
    ("value", "ndim", "expected"),
    [
        (
            "16,-4",
            None,
            "--block must be positive sizes separated by commas, one per spatial axis (e.g. 16,48,48), got '16,-4'",
        ),
        (
            "a,b",
            2,
            "--block must be 2 positive sizes separated by commas, one per spatial axis (e.g. 48,48), got 'a,b'",
        ),
        ("16,48", 3, "--block must be 3 positive sizes"),
        ("", None, "--block must be positive sizes"),
        ([16, 0], None, "got [16, 0]"),
        (7, None, "got 7"),
    ],
    ids=["negative", "text", "axes", "empty", "zero", "not-a-list"],
)
def test_bad_sizes_are_one_line_naming_the_option(value, ndim, expected):
    with pytest.raises(InputError) as info:
        parse_sizes(value, "--block", ndim)
    assert expected in str(info.value) and "\n" not in str(info.value)
