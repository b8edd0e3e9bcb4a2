from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addons.rules.proxy_authorization import ProxyAuthError
from addons.rules.proxy_authorization import basic_credentials
from addons.rules.proxy_authorization import parse_proxy_authorization


def enc(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


def reason(value) -> str:
    with pytest.raises(ProxyAuthError) as e:
        parse_proxy_authorization(value)
    return e.value.reason


def test_valid():
    c = parse_proxy_authorization(enc(b"coder:tok:with:colons"))
    assert (c.username, c.token) == ("coder", "tok:with:colons")
    assert "tok" not in repr(c)


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, "missing"),
        ("", "missing"),
        ("   ", "missing"),
        ("Basic", "malformed"),
        ("Digest abc", "malformed"),
        ("Basic !!!", "malformed"),
        ("Basic YWJj", "malformed"),  # "abc": no colon
        (enc(b"user:"), "empty_token"),
        (enc(b"\xff\xfe:tok"), "malformed"),  # not UTF-8
        (enc(b"u:tok en"), "malformed"),
        (enc(b"u:tok\r\nX-Evil: 1"), "malformed"),
        (enc(b"u:tok\x00"), "malformed"),
        ("Basic " + "A" * 70000, "malformed"),
        ("Basic dTp0b2s=\udcff", "malformed"),
        (b"Basic \xff", "malformed"),
    ],
)
def test_rejections(value, expected):
    assert reason(value) == expected


@given(
    st.from_regex(r"[A-Za-z0-9._-]{0,64}", fullmatch=True),
    st.from_regex(r"[\x21-\x7e]{1,60}", fullmatch=True),
    st.sampled_from(["Basic", "basic", "BASIC", "bAsIc"]),
)
def test_round_trip(user, token, scheme):
    value = basic_credentials(user, token).replace("Basic", scheme, 1)
    c = parse_proxy_authorization(value)
    assert (c.username, c.token) == (user, token)


@pytest.mark.parametrize(
    "user",
    ["ws\nuser=bob input_tokens=123456789", "ws\x1b[2J", "a b", "ws/other", "é", "x" * 65],
)
def test_a_user_name_outside_the_workspace_characters_is_refused(user):
    """The name reaches log lines, rules and reports: a newline in it forged whole lines."""
    with pytest.raises(ProxyAuthError) as e:
        parse_proxy_authorization(basic_credentials(user, "tok"))
    assert e.value.reason == "malformed" and "workspace" in str(e.value)


@given(st.one_of(st.none(), st.text(max_size=200), st.binary(max_size=200)))
def test_never_raises_anything_else(value):
    try:
        c = parse_proxy_authorization(value)
    except ProxyAuthError as e:
        assert e.reason in {"missing", "malformed", "empty_token"}
    else:
        assert c.token and all(0x21 <= ord(ch) <= 0x7E for ch in c.token)
