from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addons.rules.request_target import has_dot_segments
from addons.rules.request_target import is_method
from addons.rules.request_target import is_request_target
from addons.rules.request_target import path_problem


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


@pytest.mark.parametrize(
    "path, decoded",
    [("/v1/%66iles", "/v1/files"), ("/v1/fil%65s?x=%41", "/v1/files"),
     ("/v1/%61udio/speech", "/v1/audio/speech"), ("/v1/files", "/v1/files")],
)  # fmt: skip
def test_paths_are_matched_as_the_gateway_decodes_them(path, decoded):
    from addons.rules.request_target import decoded_path

    assert decoded_path(path) == decoded


@pytest.mark.parametrize(
    "path, problem",
    [("/v1/audio%2Fspeech", "encoded slash"), ("/v1/audio%2fspeech", "encoded slash"),
     ("/v1/a%5Cb", "encoded slash"), ("//v1/files", "empty segment"),
     ("/v1//files", "empty segment"), ("/v1/files?next=//x", None), ("/v1/files", None)],
)  # fmt: skip
def test_routed_paths_that_read_two_ways_are_named(path, problem):
    from addons.rules.request_target import ambiguous_path

    found = ambiguous_path(path)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize(
    "path, problem",
    [
        ("/json/mcp", None),
        ("/json/%6dcp", None),  # one reading: /json/mcp (matched decoded)
        ("/json/mcp?session_id=a%2Fb", None),  # the query is not the path
        ("/json/%2e/mcp", "the path holds . or .. segments"),
        ("/json%2Fmcp", "the path holds an encoded slash (%2F or %5C)"),
        ("//json/mcp", "the path holds an empty segment (//)"),
        ("/json/%256dcp", "the path holds an encoded percent sign (%25)"),
    ],
)
def test_path_problem_names_spellings_servers_read_differently(path, problem):
    assert path_problem(path) == problem
