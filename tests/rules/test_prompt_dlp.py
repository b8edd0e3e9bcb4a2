"""Prompt DLP's pure part, on the real detector: recall per claimed kind and false positives on
the negative corpus (tests/support/secret_corpus.py), the places each API's shape gives, masks
that change nothing but the credential, and every way a scan can fail being a decision."""

from __future__ import annotations

import collections
import gzip
import json
import zlib

import brotli
import pytest
from mitmproxy.net.encoding import encode

from addons.rules.prompt_dlp import DlpConfigError
from addons.rules.prompt_dlp import DlpPolicy
from addons.rules.prompt_dlp import Scan
from addons.rules.prompt_dlp import parse_allow
from addons.rules.prompt_dlp import parse_patterns
from addons.rules.prompt_dlp import placeholder
from addons.rules.prompt_text import parse
from addons.rules.prompt_text import prompt_parts
from addons.rules.secret_detector import DetectorError
from addons.rules.secret_detector import SecretDetector
from tests.support import secret_corpus

KEY = b"k" * 32
GITHUB = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
AWS_PAIR = ("export AWS_ACCESS_KEY_ID=AKIAZ3XQ7PLMNB4VKT2W\n"
            "export AWS_SECRET_ACCESS_KEY=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\n")  # fmt: skip


def scan(**policy) -> Scan:
    return Scan(DlpPolicy(**policy), SecretDetector(), KEY)


def chat(*contents: str) -> bytes:
    return json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": c} for c in contents]}
    ).encode()


# -- the detector on the corpus -----------------------------------------------------------------


def test_every_claimed_kind_is_found_in_at_least_95_percent_of_its_samples():
    detector = SecretDetector()
    found, total = collections.Counter(), collections.Counter()
    for sample in secret_corpus.positives():
        text = sample.text.encode()
        at = text.index(sample.secret.encode())
        span = (at, at + len(sample.secret.encode()))
        total[sample.kind] += 1
        if any(f.start < span[1] and f.end > span[0] for f in detector.scan(text)):
            found[sample.kind] += 1
    recall = {kind: found[kind] / total[kind] for kind in total}
    assert set(recall) == set(secret_corpus.CLAIMED)
    assert {k: r for k, r in recall.items() if r < 0.95} == {}


def test_no_finding_at_all_in_five_megabytes_of_ordinary_developer_text():
    detector = SecretDetector()
    corpus = secret_corpus.negatives()
    assert sum(len(t.encode()) for t in corpus) >= 5_000_000
    hits = {}
    for i, text in enumerate(corpus):
        if found := detector.scan(text.encode()):
            hits[i] = [f.kind for f in found]
    assert hits == {}


def test_the_vendors_published_example_keys_are_not_credentials():
    found = SecretDetector().scan(secret_corpus.VENDOR_EXAMPLES.encode())
    assert found == ()


def test_a_connection_string_is_masked_in_its_password_only():
    text = b"DATABASE_URL=postgres://app:Zq8vLr2pXw9sT4@orders-db.prod.acme-corp.net:5432/orders"
    (finding,) = SecretDetector().scan(text)
    assert text[finding.start : finding.end] == b"Zq8vLr2pXw9sT4"


def test_admin_patterns_add_kinds_and_the_allow_list_removes_values():
    patterns = parse_patterns([{"name": "acme-token", "regex": "acme_([a-z0-9]{24})"}])
    detector = SecretDetector(patterns, allow=[GITHUB])
    text = f"use acme_{'a1b2c3' * 4} and {GITHUB}".encode()
    (finding,) = detector.scan(text)
    assert finding.kind == "acme-token" and text[finding.start : finding.end] == b"a1b2c3" * 4


@pytest.mark.parametrize(
    "raw, problem",
    [
        ({"name": "x"}, "must be a list"),
        ([{"name": "x"}], "dlp.patterns[0]: must be {name: ..., regex: ...}"),
        ([{"name": "Bad Name", "regex": "a"}], "dlp.patterns[0]: name must be"),
        ([{"name": "x", "regex": "("}], "dlp.patterns[0] (x): regex does not compile"),
        ([{"name": "x", "regex": "a*"}], "dlp.patterns[0] (x): regex must match something"),
        ([{"name": "x", "regex": "a"}, {"name": "x", "regex": "b"}], "dlp.patterns[1]: the name"),
    ],
)
def test_a_broken_pattern_names_its_entry(raw, problem):
    with pytest.raises(DlpConfigError, match=None) as e:
        parse_patterns(raw)
    assert problem in str(e.value)


def test_the_allow_list_takes_only_values():
    assert parse_allow(["sk_test_1"]) == frozenset({"sk_test_1"})
    with pytest.raises(DlpConfigError, match="dlp.allow"):
        parse_allow([1])


# -- where it looks ---------------------------------------------------------------------------


def places(body: dict) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for part in prompt_parts(parse(json.dumps(body).encode())):
        out.setdefault(part.where, []).append(part.text)
    return out


def test_openai_chat_completions_places():
    got = places({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "function": {"name": "cat", "arguments": "{\"f\":\".env\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "TOKEN=x"},
    ]})  # fmt: skip
    assert b"be brief" in got["messages[0]"] and b"hello" in got["messages[1]"]
    assert b'{"f":".env"}' in got["messages[2]"]
    assert b"TOKEN=x" in got["messages[3] (tool result of call call_1)"]
    assert not any(b"iVBOR" in t for texts in got.values() for t in texts)  # image data skipped


def test_openai_responses_places():
    got = places({"model": "gpt-5", "instructions": "be brief", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
        {"type": "function_call_output", "call_id": "call_7", "output": "AWS=1"},
        {"type": "reasoning", "encrypted_content": "gAAAAB-opaque"},
    ]})  # fmt: skip
    assert got["instructions"] == [b"be brief"] and b"hello" in got["input[0]"]
    assert b"AWS=1" in got["input[1] (tool output of call call_7)"]
    assert not any(b"opaque" in t for texts in got.values() for t in texts)
    assert places({"model": "gpt-5", "input": "just text"})["input"] == [b"just text"]


def test_anthropic_messages_places():
    got = places({"model": "claude", "system": [{"type": "text", "text": "be brief"}], "messages": [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "sig-opaque"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "file body"}]},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]},
    ]})  # fmt: skip
    assert b"be brief" in got["system[0]"] and b"hello" in got["messages[0]"]
    assert b"file body" in got["messages[2] (tool_result of call toolu_01)"]
    texts = [t for ts in got.values() for t in ts]
    assert b"sig-opaque" not in texts and b"iVBOR" not in texts


def test_gemini_places():
    got = places({"systemInstruction": {"parts": [{"text": "be brief"}]}, "contents": [
        {"role": "user", "parts": [{"text": "hello"}, {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}}]},
    ]})  # fmt: skip
    assert b"be brief" in got["systemInstruction"] and b"hello" in got["contents[0]"]
    assert b"iVBOR" not in [t for ts in got.values() for t in ts]


def test_a_duplicated_key_cannot_hide_a_value():
    body = b'{"messages": [{"role": "user", "content": "x", "content": "hidden value"}]}'
    assert b"hidden value" in [p.text for p in prompt_parts(parse(body))]


# -- verdicts ---------------------------------------------------------------------------------


def test_block_names_the_kind_and_the_place_never_the_value():
    verdict = scan().body(chat("hi", f"my token is {GITHUB}"), "", "block")
    assert verdict.action == "block" and verdict.body is None
    assert verdict.message == "a GitHub token in messages[1]"
    assert GITHUB not in verdict.message


def test_flag_records_and_keeps_a_masked_copy_for_the_dump_only():
    raw = chat(AWS_PAIR)
    verdict = scan().body(raw, "", "flag")
    assert verdict.action == "flag"
    assert verdict.kinds == ("aws-access-token", "aws-secret-access-key")
    assert (
        b"AKIAZ3XQ7PLMNB4VKT2W" not in verdict.body
        and b"[REDACTED aws-access-token" in verdict.body
    )


def test_an_ordinary_body_passes_untouched():
    verdict = scan().body(chat("def f(x):\n    return hashlib.sha256(x).hexdigest()"), "", "mask")
    assert (verdict.action, verdict.findings, verdict.body) == ("pass", (), None)


@pytest.mark.parametrize(
    "spelt",
    [
        GITHUB,  # as most clients write it
        GITHUB.replace("_", "\\u005f"),  # escaped: found by decoding the literal
    ],
)
def test_mask_replaces_the_credential_and_not_one_other_byte(spelt):
    raw = ('{"model":"gpt-4o","messages":[{"role":"user","content":"a\\nb \\"'
           + spelt + '\\" and é\\/x"}],"stream":true}').encode()  # fmt: skip
    verdict = scan().body(raw, "", "mask")
    mark = placeholder("github-pat", GITHUB, KEY)
    assert verdict.action == "mask" and verdict.body is not None
    assert verdict.body == raw.replace(spelt.encode(), mark.encode())
    assert json.loads(verdict.body)["messages"][0]["content"] == f'a\nb "{mark}" and é/x'


def test_the_placeholder_is_the_same_in_every_turn_and_differs_per_deployment():
    first = scan().body(chat(f"t {GITHUB}"), "", "mask").body
    later = scan().body(chat("other", f"again {GITHUB} here"), "", "mask").body
    mark = placeholder("github-pat", GITHUB, KEY).encode()
    assert mark in first and mark in later
    assert placeholder("github-pat", GITHUB, b"another deployment") != mark.decode()
    assert mark.startswith(b"[REDACTED github-pat ") and GITHUB.encode() not in first


def test_a_private_key_inside_its_key_file_is_masked_once_with_the_file():
    import random

    key_file = secret_corpus.gcp_service_account(random.Random(1))
    verdict = scan().body(chat(key_file), "", "mask")
    assert verdict.action == "mask" and b"PRIVATE KEY" not in verdict.body
    assert verdict.body.count(b"[REDACTED ") == 1


@pytest.mark.parametrize(
    "encoding, encode",
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("zstd", lambda b: encode(b, "zstd")),  # as mitmproxy (and clients) write it
    ],
)
def test_compressed_bodies_are_scanned_decoded(encoding, encode):
    raw = chat(f"key {GITHUB}")
    verdict = scan().body(encode(raw), encoding, "mask")
    assert verdict.action == "mask"
    assert verdict.body == raw.replace(
        GITHUB.encode(), placeholder("github-pat", GITHUB, KEY).encode()
    )


def test_a_compression_bomb_is_a_failure_under_the_policy():
    bomb = gzip.compress(b"{" + b" " * (8 << 20))
    assert scan(max_bytes=1 << 20).body(bomb, "gzip", "block").action == "block"
    verdict = scan(max_bytes=1 << 20, on_error="pass").body(bomb, "gzip", "block")
    assert verdict.action == "pass" and "dlp.max_bytes" in verdict.unscanned


def test_a_body_over_max_bytes_follows_on_error():
    big = chat("x" * 5000)
    assert scan(max_bytes=1024).body(big, "", "mask").action == "block"
    assert scan(max_bytes=1024).body(big, "", "flag").action == "pass"  # auto: pass for flag
    verdict = scan(max_bytes=1024, on_error="block").body(big, "", "flag")
    assert verdict.action == "block" and "larger than dlp.max_bytes (1024 bytes)" in verdict.message


def test_a_detector_timeout_follows_on_error():
    body = chat(*("word " * 40_000 for _ in range(20)))  # 4 MB: longer than a microsecond
    verdict = scan(timeout=1e-6).body(body, "", "mask")
    assert verdict.action == "block" and "longer than" in verdict.unscanned
    assert scan(timeout=1e-6, on_error="pass").body(body, "", "mask").action == "pass"


def test_a_detector_failure_follows_on_error():
    class Broken(SecretDetector):
        def _scan_new(self, texts, timeout):
            raise DetectorError("the detector failed (RuntimeError)")

    verdict = Scan(DlpPolicy(), Broken(), KEY).body(chat(f"x {GITHUB}"), "", "flag")
    assert verdict.action == "pass" and verdict.unscanned == "the detector failed (RuntimeError)"


@pytest.mark.parametrize(
    "raw, encoding",
    [(b"\x00\x01\x02binary", ""), (b"data", "compress"), (b"not gzip", "gzip")],
)
def test_a_body_that_cannot_be_read_follows_the_unreadable_policy(raw, encoding):
    assert scan().body(raw, encoding, "block").action == "pass"
    verdict = scan(unreadable="block").body(raw, encoding, "block")
    assert verdict.action == "block" and verdict.unscanned


def test_a_text_body_that_is_not_json_is_scanned_as_text():
    verdict = scan().body(f"key={GITHUB}\n".encode(), "", "mask")
    assert verdict.body == f"key={placeholder('github-pat', GITHUB, KEY)}\n".encode()


def test_a_growing_conversation_costs_the_scan_of_its_new_turn_only():
    detector = SecretDetector()
    dlp = Scan(DlpPolicy(), detector, KEY)
    turns, costs = [], []
    for i in range(30):
        turns.append(f"turn {i}: " + "some code and prose " * 200)
        before = detector.scanned_bytes
        assert dlp.body(chat(*turns), "", "block").action == "pass"
        costs.append(detector.scanned_bytes - before)
    assert max(costs[1:]) <= costs[0] * 1.1  # each turn scans one turn's text, not the history


def test_a_credential_in_the_second_gzip_member_is_found_and_masked():
    """Servers decode every member of a gzip body (Python's and Go's readers do)."""
    first, second = chat("hello"), f" and key {GITHUB}".encode()
    body = gzip.compress(first) + gzip.compress(second)
    assert scan().body(body, "gzip", "block").action == "block"
    verdict = scan().body(body, "gzip", "mask")
    assert verdict.action == "mask" and GITHUB.encode() not in verdict.body
    assert verdict.body.startswith(first)


def test_bytes_after_a_gzip_member_that_are_no_member_are_not_skipped():
    body = gzip.compress(chat("hello")) + b"trailing, not gzip " + GITHUB.encode()
    verdict = scan(unreadable="block").body(body, "gzip", "block")
    assert verdict.action == "block" and verdict.unscanned


def _document(source: dict) -> bytes:
    return json.dumps({"model": "claude", "messages": [{"role": "user", "content": [
        {"type": "document", "source": source}]}]}).encode()  # fmt: skip


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "body",
    [
        _document({"type": "text", "media_type": "text/plain", "data": f"notes {GITHUB}"}),
        _document({"type": "base64", "media_type": "text/plain", "data": _b64(f"k={GITHUB}")}),
        json.dumps({"model": "gpt-5", "input": [{"role": "user", "content": [
            {"type": "input_file", "filename": "a.env",
             "file_data": f"data:text/plain;base64,{_b64(f'TOKEN={GITHUB}')}"}]}]}).encode(),
        json.dumps({"model": "gpt-5", "input": [{"role": "user", "content": [
            {"type": "input_file", "file_data": f"data:application/json,%7B%22t%22%3A%22{GITHUB}%22%7D"}]}]}).encode(),
    ],
    ids=["anthropic-text-source", "anthropic-base64-text", "openai-file-base64", "openai-file-url-escaped"],
)  # fmt: skip
def test_a_text_document_is_scanned_under_block_and_never_passes_under_mask(body):
    verdict = scan().body(body, "", "block")
    assert verdict.action == "block" and "github" in verdict.message.lower()
    masked = scan().body(body, "", "mask")
    assert masked.action == "block" or (
        masked.action == "mask" and GITHUB.encode() not in masked.body
    )


def test_binary_media_stays_skipped():
    image = _b64("\x89PNG" + GITHUB)  # a PNG's bytes are not a prompt
    body = _document({"type": "base64", "media_type": "image/png", "data": image})
    assert scan().body(body, "", "block").action == "pass"


def test_a_credential_used_as_an_object_key_is_found_and_masked():
    body = json.dumps({"model": "gpt-4o", "metadata": {GITHUB: 1}}).encode()
    assert scan().body(body, "", "block").action == "block"
    masked = scan().body(body, "", "mask")
    assert masked.action == "mask" and GITHUB.encode() not in masked.body


def test_a_credential_split_across_two_text_parts_is_found():
    half = len(GITHUB) // 2
    body = json.dumps({"model": "claude", "messages": [{"role": "user", "content": [
        {"type": "text", "text": f"my token is {GITHUB[:half]}"},
        {"type": "text", "text": f"{GITHUB[half:]} thanks"}]}]}).encode()  # fmt: skip
    assert scan().body(body, "", "block").action == "block"
    assert scan().body(body, "", "mask").action in ("block", "mask")
    masked = scan().body(body, "", "mask")
    assert masked.action == "block" or GITHUB[:half].encode() not in masked.body


def _multipart(*parts: tuple[str, bytes]) -> tuple[bytes, str]:
    boundary = "XyZ123"
    out = b""
    for name, content in parts:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                .encode() + content + b"\r\n")  # fmt: skip
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_multipart_upload_is_scanned_part_by_part():
    body, kind = _multipart(("file", b"\x89PNG\x00\x01\x02"), ("purpose", f"k={GITHUB}".encode()))
    assert scan().body(body, "", "block", kind).action == "block"  # the text part is read
    masked = scan().body(body, "", "mask", kind)
    assert masked.action == "mask" and GITHUB.encode() not in masked.body
    assert b"\x89PNG\x00\x01\x02" in masked.body  # the binary part untouched
    clean, kind = _multipart(("file", b"\x89PNG\x00\x01\x02"), ("purpose", b"assistants"))
    verdict = scan().body(clean, "", "block", kind)
    assert verdict.action == "pass" and "binary part" in verdict.unscanned  # recorded, not silent
    assert scan(unreadable="block").body(clean, "", "block", kind).action == "block"
