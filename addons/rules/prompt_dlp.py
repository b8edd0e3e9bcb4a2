"""
Prompt DLP: what happens to a request body that carries a credential. Pure logic; the addon
(addons/govern/prompt_guard.py) holds the bodies back and applies the verdict.

Actions: `block` (the request never leaves; the client gets its API's 4xx naming the kind and
the place, never the value), `mask` (each credential replaced in place by a placeholder keyed
by a deployment secret: the same credential gives the same placeholder in every turn, so
prompt caches stay valid; nothing is ever restored into a response), `flag` (sent unchanged,
recorded). A body that cannot be scanned (not decodable, too large, the detector failed or ran
out of time) is a decision too: `on_error` (block or pass) for failures and sizes, `unreadable`
for bodies that are not text (an observed tool's protobuf), and it is always recorded.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import replace
from typing import Any

from addons.rules.content_decoding import DecodedTooLarge
from addons.rules.content_decoding import UnknownEncoding
from addons.rules.content_decoding import decode_body
from addons.rules.prompt_text import MaskError
from addons.rules.prompt_text import NotJson
from addons.rules.prompt_text import PromptPart
from addons.rules.prompt_text import mask_json
from addons.rules.prompt_text import outermost
from addons.rules.prompt_text import parse
from addons.rules.prompt_text import prompt_parts
from addons.rules.secret_detector import CustomPattern
from addons.rules.secret_detector import DetectorError
from addons.rules.secret_detector import SecretDetector
from addons.rules.secret_detector import describe

ACTIONS = ("block", "mask", "flag")


class DlpConfigError(ValueError):
    """A broken DLP setting; the message names it."""


@dataclass(frozen=True)
class DlpPolicy:
    action: str | None = None  # the global action; None: off unless a rule turns it on
    on_error: str | None = None  # block or pass; None: block for block/mask, pass for flag
    unreadable: str = "pass"  # a body that is not text: pass (recorded unscanned) or block
    max_bytes: int = 4 * 1024 * 1024
    timeout: float = 2.0

    def failure_action(self, action: str) -> str:
        """What a scan that fails (or a body over max_bytes) leads to, under `action`."""
        if self.on_error is not None:
            return self.on_error
        return "pass" if action == "flag" else "block"


def parse_patterns(raw: Any) -> tuple[CustomPattern, ...]:
    """The admin's own kinds: [{name, regex}], each checked now (a bad one names itself)."""
    if raw in (None, ""):
        return ()
    if not isinstance(raw, list):
        raise DlpConfigError("dlp.patterns: must be a list of {name, regex}")
    out, names = [], set()
    for i, entry in enumerate(raw):
        where = f"dlp.patterns[{i}]"
        if not isinstance(entry, Mapping) or set(entry) != {"name", "regex"}:
            raise DlpConfigError(f"{where}: must be {{name: ..., regex: ...}}")
        name, regex = entry["name"], entry["regex"]
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", name):
            raise DlpConfigError(f"{where}: name must be lower-case letters, digits and -")
        if name in names:
            raise DlpConfigError(f"{where}: the name {name!r} is used twice")
        names.add(name)
        if not isinstance(regex, str) or not regex:
            raise DlpConfigError(f"{where} ({name}): regex must be a regular expression")
        try:
            compiled = re.compile(regex.encode())
        except re.error as e:
            raise DlpConfigError(f"{where} ({name}): regex does not compile ({e})") from None
        if compiled.groups > 1 or compiled.search(b"") is not None:
            raise DlpConfigError(
                f"{where} ({name}): regex must match something, with at most one group"
            )
        out.append(CustomPattern(name, compiled))
    return tuple(out)


def parse_allow(raw: Any) -> frozenset[str]:
    if raw in (None, ""):
        return frozenset()
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise DlpConfigError("dlp.allow: must be a list of values (for example test keys)")
    return frozenset(raw)


def placeholder(kind: str, value: str, key: bytes) -> str:
    """Deterministic and one-way: the same credential and deployment give the same text."""
    tag = hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:12]
    return f"[REDACTED {kind} {tag}]"


@dataclass(frozen=True)
class Located:
    kind: str
    where: str


@dataclass(frozen=True)
class Verdict:
    """What the scan found and what is done: `action` is block, mask, flag or pass."""

    action: str
    findings: tuple[Located, ...] = ()
    unscanned: str | None = None  # why the body was not (fully) scanned
    body: bytes | None = None  # the masked body: sent instead under mask, dumped under flag

    @property
    def message(self) -> str:
        """For the client and the developer page: kinds and places, never a value."""
        if self.unscanned is not None and not self.findings:
            return f"the proxy could not scan this request for credentials: {self.unscanned}"
        first = self.findings[0]
        more = len(self.findings) - 1
        tail = f" (and {more} more)" if more else ""
        return f"{describe(first.kind)} in {first.where}{tail}"

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.kind for f in self.findings))


class Scan:
    """Scans request bodies under one policy and one detector."""

    def __init__(self, policy: DlpPolicy, detector: SecretDetector, mask_key: bytes):
        self.policy = policy
        self.detector = detector
        self.mask_key = mask_key

    def body(self, raw: bytes, encoding: str, action: str, content_type: str = "") -> Verdict:
        """The verdict on a whole request body under `action` (block, mask or flag); a
        multipart body part by part (`content_type` names its boundary)."""
        if not raw:
            return Verdict("pass")
        if len(raw) > self.policy.max_bytes:
            return self.too_large(action)
        try:
            decoded = decode_body(raw, encoding, self.policy.max_bytes)
        except DecodedTooLarge:
            return self._failed(
                action,
                f"the body decodes to more than dlp.max_bytes ({self.policy.max_bytes} bytes)",
            )
        except UnknownEncoding as e:
            return self.unreadable(f"its content-encoding {e} is not one the proxy decodes")
        except ValueError as e:
            return self.unreadable(str(e))
        if (boundary := multipart_boundary(content_type)) is not None:
            return self._multipart(decoded, boundary, action)
        try:
            parts = prompt_parts(parse(decoded))
            is_json = True
        except NotJson:
            if not _is_text(decoded):
                return self.unreadable("the body is neither JSON nor text")
            parts, is_json = [PromptPart("body", decoded)], False
        return self.parts(parts, action, decoded, is_json)

    def _multipart(self, decoded: bytes, boundary: bytes, action: str) -> Verdict:
        """Each part read as a body is (a file upload's text part too); a binary part is
        unreadable (dlp.unreadable decides), and the text parts are still scanned."""
        texts: list[PromptPart] = []
        binary = 0
        for i, content in enumerate(multipart_parts(decoded, boundary)):
            try:
                texts += prompt_parts(parse(content))
            except NotJson:
                if _is_text(content):
                    texts.append(PromptPart(f"part {i}", content))
                else:
                    binary += 1
        verdict = self.parts(texts, action, decoded, is_json=False) if texts else Verdict("pass")
        if not binary or verdict.action == "block":
            return verdict
        unreadable = self.unreadable(f"{binary} binary part(s) of a multipart body")
        if unreadable.action == "block":
            return unreadable
        return replace(verdict, unscanned=unreadable.unscanned)

    def parts(
        self, parts: list[PromptPart], action: str, decoded: bytes, is_json: bool = True
    ) -> Verdict:
        try:
            found = self.detector.scan_many([p.text for p in parts], self.policy.timeout)
        except DetectorError as e:
            return self._failed(action, str(e))
        located, values = [], {}
        for part, findings in zip(parts, found, strict=True):
            for f in findings:
                located.append(Located(f.kind, part.where))
                value = part.text[f.start : f.end].decode("utf-8", "surrogatepass")
                values[value] = placeholder(f.kind, value, self.mask_key)
        if not located:
            return Verdict("pass")
        unique = tuple(dict.fromkeys(located))
        if action == "block":
            return Verdict(action, unique)
        try:
            masked = mask_json(decoded, values) if is_json else _mask_text(decoded, values)
        except MaskError as e:
            if action == "flag":
                return Verdict("flag", unique)  # sent as it is anyway; the dump goes without
            return self._failed("mask", str(e), unique)
        return Verdict(action, unique, body=masked)

    def _failed(self, action: str, why: str, findings: tuple[Located, ...] = ()) -> Verdict:
        return Verdict(self.policy.failure_action(action), findings, unscanned=why)

    def too_large(self, action: str) -> Verdict:
        """A body over max_bytes (seen in its Content-Length, or once read)."""
        why = f"the body is larger than dlp.max_bytes ({self.policy.max_bytes} bytes)"
        return self._failed(action, why)

    def unreadable(self, why: str) -> Verdict:
        return Verdict(self.policy.unreadable, unscanned=why)


def _mask_text(body: bytes, values: dict[str, str]) -> bytes:
    for value in outermost(values):
        body = body.replace(value.encode("utf-8", "surrogatepass"), values[value].encode())
    return body


_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.I)


def multipart_boundary(content_type: str) -> bytes | None:
    if not content_type.lower().lstrip().startswith("multipart/"):
        return None
    m = _BOUNDARY.search(content_type)
    return m.group(1).encode("latin-1", "replace") if m else None


def multipart_parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The contents of a multipart body's parts (their headers dropped)."""
    out = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        _head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            _head, sep, content = chunk.partition(b"\n\n")
        out.append(content.removesuffix(b"\r\n").removesuffix(b"\n"))
    return out


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(c in text for c in "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f")
