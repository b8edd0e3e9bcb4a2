from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addons.rules.model_field import ModelUnreadable
from addons.rules.model_field import model_in_path
from addons.rules.model_field import model_span
from addons.rules.model_field import replace_model


def test_only_the_model_value_changes():
    body = b'{ "messages": [{"role":"user","model":"inner"}],\n  "model" : "gpt-4o", "x": 1.50}'
    out = replace_model(body, "qwen/qwen3-coder")
    assert (
        out
        == b'{ "messages": [{"role":"user","model":"inner"}],\n  "model" : "qwen/qwen3-coder", "x": 1.50}'
    )


def test_model_is_added_when_absent():
    assert json.loads(replace_model(b'{"a": 1}', "m")) == {"model": "m", "a": 1}
    assert json.loads(replace_model(b"{}", "m")) == {"model": "m"}


@pytest.mark.parametrize("body", [b"[1]", b"not json", b'{"a": }', b"\xff", b'{"a":1} {}'])
def test_unreadable_bodies_say_so(body):
    with pytest.raises(ModelUnreadable):
        model_span(body)


def test_gemini_puts_the_model_in_the_path():
    assert (
        model_in_path("/v1beta/models/gemini-2.5-pro:generateContent?alt=sse") == "gemini-2.5-pro"
    )
    assert model_in_path("/v1/chat/completions") is None


@given(
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4),
    st.text(min_size=1, max_size=10),
)
def test_replacing_keeps_every_other_field(obj, model):
    body = json.dumps({**obj, "model": "old"}).encode()
    assert json.loads(replace_model(body, model)) == {**obj, "model": model}
    assert model_span(body)[0] == "old"


def test_a_body_nested_past_the_decoders_depth_is_unreadable_not_an_escape():
    """The decoder recurses per level: a RecursionError must become ModelUnreadable (the rule
    then refuses the request), never escape and leave the rule undecided."""
    deep = b'{"model": "o1-preview", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ModelUnreadable, match="nested too deeply"):
        model_span(deep)
    with pytest.raises(ModelUnreadable):
        replace_model(deep, "gpt-4o")


def test_the_model_is_read_from_the_first_bytes_of_a_body():
    from addons.rules.model_field import model_in_prefix

    assert model_in_prefix(b'{"model": "gpt-4o", "messages": [{"content": "unfinished') == "gpt-4o"
    assert model_in_prefix(b' {"stream": true, "messages": [{"a": 1}], "model": "x"}') == "x"
    assert model_in_prefix(b'{"messages": [{"content": "the prefix ends') is None
    assert model_in_prefix(b"[1, 2]") is None and model_in_prefix(b'{"model": 3}') is None
