"""Member-number patterns."""

from __future__ import annotations

import pytest

from membership.models import NUMBER_PATTERN, format_member_number


@pytest.mark.parametrize(
    ("pattern", "number", "label"),
    [
        ("####", 42, "0042"),
        ("####", 12345, "12345"),  # past the padding the number just grows
        ("#", 7, "7"),
        ("LS-##", 7, "LS-07"),
        ("No.###号", 5, "No.005号"),
    ],
)
def test_format(pattern, number, label):
    assert format_member_number(pattern, number) == label


@pytest.mark.parametrize("pattern", ["", "ABC", "#-#", "#########", "a" * 11 + "#"])
def test_invalid_patterns(pattern):
    assert NUMBER_PATTERN.fullmatch(pattern) is None
