"""
Credentials in text: which kind, and where (UTF-8 byte offsets), found by a maintained detector
rather than a regex list of our own.

The detector is Kingfisher (MongoDB's Rust scanner, `kingfisher-secret-scanner`): it carries
the Betterleaks and Veles rule catalogues (cloud, VCS, chat, SaaS and AI provider keys,
private keys, JWTs, connection strings), compiles them once with Vectorscan and scans tens of
MB/s on one core with the GIL released; the manual (DLP page) gives the measured comparison with the
alternatives. Its catalogue has no generic "high entropy" rule at the confidence we load, which
is what made entropy detectors unusable on code.

On top of it: the admin's own patterns and allow-list, and a filter for the placeholders that
documentation and examples are full of (`password`, `<token>`, `...EXAMPLE`). Findings are
cached by the digest of the text scanned: clients resend the whole conversation every turn,
and only what is new costs a scan.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import re
import threading
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass

NAMESPACES = ("betterleaks.", "veles.secrets/", "kingfisher.")
CONFIDENCE = "medium"
CACHE_ENTRIES = 50_000
# Text shorter than this holds no credential any rule knows (the shortest, a GitLab token, is
# 26 characters): not worth a call or a cache entry.
MIN_TEXT = 16
# The catalogue's hidden rules find what goes with a credential (client ids, account names,
# URLs) and are not reported, except these: the secret half of a pair is a credential itself.
HIDDEN_SECRETS = frozenset({"aws-secret-access-key", "alibaba-sts-security-token",
                            "exoscale-api-secret", "polymarket-api-secret"})  # fmt: skip

# What the developer page and the block message call the commonest kinds.
DESCRIPTIONS = {
    "aws-access-token": "an AWS access key",
    "aws-secret-access-key": "an AWS secret key",
    "aws-session-token": "an AWS session token",
    "gcp-api-key": "a Google API key",
    "gcp-gemini-api": "a Gemini API key",
    "gcp-service-account": "a GCP service-account key",
    "azure-storage-account-key": "an Azure storage key",
    "github-pat": "a GitHub token",
    "github-fine-grained-pat": "a GitHub token",
    "github-app-token": "a GitHub app token",
    "github-oauth": "a GitHub OAuth token",
    "gitlab-pat": "a GitLab token",
    "slack-bot-token": "a Slack token",
    "slack-user-token": "a Slack token",
    "slack-app-token": "a Slack token",
    "stripe-access-token": "a Stripe key",
    "twilio-api-key": "a Twilio API key",
    "sendgrid": "a SendGrid API key",
    "sendgrid-api-token": "a SendGrid API key",
    "openai-api-key": "an OpenAI API key",
    "anthropic-api-key": "an Anthropic API key",
    "anthropic-admin-api-key": "an Anthropic admin key",
    "private-key": "a private key",
    "jwt": "a signed JWT",
    "generic-credential-uri": "a connection string with a password",
    "mongodb-connection-string": "a connection string with a password",
}

# Values that mark an example, not a credential: the vendors' documentation and every README's
# `postgres://user:password@localhost`. Matched case-insensitively against the secret itself.
_PLACEHOLDER_WORDS = ("example", "xxxx", "placeholder", "changeme", "your_", "your-", "dummy",
                      "redacted", "<", ">", "${", "{{", "****")  # fmt: skip
_PLACEHOLDER_VALUES = frozenset({"password", "passwd", "pass", "secret", "pwd", "pw", "token",
                                 "user", "username", "admin", "root", "test", "apikey"})  # fmt: skip


def describe(kind: str) -> str:
    return DESCRIPTIONS.get(kind, f"a credential ({kind})")


def is_placeholder(value: str) -> bool:
    low = value.lower()
    if low.strip("[]<>{}()'\"*_") in _PLACEHOLDER_VALUES or len(set(low)) <= 2:
        return True
    return any(word in low for word in _PLACEHOLDER_WORDS)


@dataclass(frozen=True)
class Finding:
    kind: str  # the rule's name without its catalogue's namespace (`github-pat`), or the admin's
    start: int  # UTF-8 byte offsets of the credential in the scanned text
    end: int


@dataclass(frozen=True)
class CustomPattern:
    """An admin's own kind: a regular expression (on the UTF-8 text; group 1, if it has one,
    is the credential, else the whole match)."""

    name: str
    regex: re.Pattern[bytes]


class DetectorError(RuntimeError):
    """The detector failed or ran out of time on a text (the policy decides what happens)."""


def _kind_of(rule_id: str) -> str:
    for prefix in NAMESPACES:
        if rule_id.startswith(prefix):
            return rule_id[len(prefix) :]
    return rule_id


_ENGINES = threading.local()


def engine():
    """The compiled catalogue, one per thread (a scanner's scratch space is its own; the event
    loop scans small bodies and one worker thread the large ones). Compiling takes seconds
    cold; Kingfisher keeps the compiled rules in its on-disk cache, so a second one is quick."""
    scanner = getattr(_ENGINES, "scanner", None)
    if scanner is None:
        from kingfisher_sdk import Rules
        from kingfisher_sdk import Scanner

        scanner = Scanner(Rules(confidence=CONFIDENCE))
        scanner.scan("warm up")  # the first scan sets up its scratch space
        _ENGINES.scanner = scanner
    return scanner


class SecretDetector:
    """Finds credentials in texts; one per configuration (patterns, allow-list)."""

    def __init__(
        self,
        patterns: Sequence[CustomPattern] = (),
        allow: Iterable[str] = (),
        cache_entries: int = CACHE_ENTRIES,
    ):
        self.patterns = tuple(patterns)
        self.allow = frozenset(allow)
        self._cache: collections.OrderedDict[bytes, tuple[Finding, ...]] = collections.OrderedDict()
        self._cache_entries = cache_entries
        self._cache_lock = threading.Lock()  # scans run in the event loop and in a thread
        self.scanned_bytes = 0  # what actually went through the detector (the cache's effect)

    def scan_many(
        self, texts: Sequence[bytes], timeout: float | None = None
    ) -> list[tuple[Finding, ...]]:
        """Each text's findings, in order. Texts seen before come from the cache; the new ones
        go to the detector together, in one call."""
        results: list[tuple[Finding, ...] | None] = [None] * len(texts)
        digests: list[bytes] = [b""] * len(texts)
        new: list[int] = []
        for i, text in enumerate(texts):
            if len(text) < MIN_TEXT:
                results[i] = ()
                continue
            digests[i] = digest = hashlib.blake2b(text, digest_size=16).digest()
            with self._cache_lock:
                cached = self._cache.get(digest)
                if cached is not None:
                    self._cache.move_to_end(digest)
            if cached is None:
                new.append(i)
            else:
                results[i] = cached
        if new:
            for i, found in zip(new, self._scan_new([texts[i] for i in new], timeout), strict=True):
                results[i] = found
                self._remember(digests[i], found)
        return [r if r is not None else () for r in results]

    def scan(self, text: bytes, timeout: float | None = None) -> tuple[Finding, ...]:
        return self.scan_many([text], timeout)[0]

    def _remember(self, digest: bytes, found: tuple[Finding, ...]) -> None:
        with self._cache_lock:
            self._cache[digest] = found
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)

    def _scan_new(self, texts: list[bytes], timeout: float | None) -> list[tuple[Finding, ...]]:
        # One call for all: the texts joined by a separator no rule matches across, offsets
        # mapped back to each text.
        sep = b"\n\x00\n"
        starts, pos = [], 0
        for text in texts:
            starts.append(pos)
            pos += len(text) + len(sep)
        joined = sep.join(texts)
        self.scanned_bytes += len(joined)
        try:
            raw = engine().scan(joined, timeout=timeout)
        except TimeoutError:
            raise DetectorError(f"the scan took longer than {timeout} s") from None
        except Exception as e:  # a native failure: the policy decides, never a crash
            raise DetectorError(f"the detector failed ({type(e).__name__})") from None
        per_text: list[list[Finding]] = [[] for _ in texts]
        for hit in raw:
            location = hit.location
            start, end = location["start_offset"], location["end_offset"]
            i = bisect.bisect_right(starts, start) - 1
            if i < 0 or end > starts[i] + len(texts[i]):
                continue  # across a separator: not one text's
            kind = _kind_of(hit.rule_id)
            if not hit.visible and kind not in HIDDEN_SECRETS:
                continue
            span = _secret_span(kind, texts[i], start - starts[i], end - starts[i])
            self._keep(per_text[i], kind, texts[i], *span)
        for i, text in enumerate(texts):
            for pattern in self.patterns:
                for m in pattern.regex.finditer(text):
                    span = m.span(1) if m.re.groups else m.span()
                    self._keep(per_text[i], pattern.name, text, *span)
        return [tuple(sorted(set(found), key=lambda f: (f.start, f.end))) for found in per_text]

    def _keep(self, into: list[Finding], kind: str, text: bytes, start: int, end: int) -> None:
        value = text[start:end].decode("utf-8", "replace")
        if end <= start or value in self.allow or is_placeholder(value):
            return
        into.append(Finding(kind, start, end))


def _secret_span(kind: str, text: bytes, start: int, end: int) -> tuple[int, int]:
    """A connection string's secret is its password: only that is masked, so the model
    still sees which database the developer means."""
    if kind not in ("generic-credential-uri", "mongodb-connection-string"):
        return start, end
    match = text[start:end]
    at = match.rfind(b"@")
    colon = match.find(b":", match.find(b"://") + 3)
    if 0 < colon < at:
        return start + colon + 1, start + at
    return start, end
