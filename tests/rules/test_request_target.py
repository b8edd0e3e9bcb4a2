from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addons.rules.request_target import has_dot_segments
from addons.rules.request_target import is_method
from addons.rules.request_target import is_request_target


@pytest.mark.parametrize(
    "method, ok",
    [("GET", True), ("M-SEARCH", True), ("GET X", False), ("", False), ("P\x00", False)],
)
def test_method_is_a_token(method, ok):
    assert is_method(method) is ok


@pytest.mark.parametrize(
    "path, ok",
    [
        ("/v1/x?a=%20b", True),
        ("/v1/x y", False),
        ("/v1/\x7f", False),
        ("/v1\t", False),
        ("/é", False),
    ],
)
def test_target_is_visible_ascii(path, ok):
    assert is_request_target(path) is ok


@pytest.mark.parametrize(
    "path, climbs",
    [
        ("/v1/chat/completions", False),
        ("/v1/../../../users/me", True),
        ("/v1/./x", True),
        ("/v1/%2e%2e/x", True),
        ("/v1/.%2E/x", True),
        ("/v1/%2E%2E%2Fusers", True),  # an encoded slash hides the segment
        ("/v1/..x/y", False),
        ("/v1/x?next=../y", False),  # the query is not a path
        ("/v1//x", False),
    ],
)
def test_dot_segments(path, climbs):
    assert has_dot_segments(path) is climbs


@given(st.lists(st.text(alphabet="abcXYZ-_~", min_size=1), max_size=6))
def test_plain_segments_never_climb(segments):
    assert not has_dot_segments("/" + "/".join(segments))
