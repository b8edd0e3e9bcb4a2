"""
The DLP corpus: fake credentials of every kind the proxy claims to catch, in the places a
developer pastes them from, and ordinary text a developer sends that must pass untouched.

Every credential here is generated (random, in the vendor's published format): none is real.
The negatives are the kinds of text that made entropy detectors unusable on code: hashes,
UUIDs, base64 test data, lockfiles with integrity hashes, minified JavaScript, the vendors'
own documentation examples, and real source files (this interpreter's installed packages;
the few that embed a PEM private key, a package's own test key, hold a credential and are
left out).
Seeded, so every run and both interpreters build the same corpus.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import string
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"


@dataclass(frozen=True)
class Positive:
    kind: str  # the kind this credential is claimed as (README's recall table)
    secret: str  # the credential itself, as it appears in `text`
    text: str  # the credential in its context


def _pick(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- one generator per kind: a fresh fake credential ------------------------------------------


def aws_access_key(rng: random.Random) -> str:
    return "AKIA" + _pick(rng, string.ascii_uppercase + "234567", 16)


def aws_secret_key(rng: random.Random) -> str:
    return _pick(rng, ALNUM + "/+", 40)


def gcp_api_key(rng: random.Random) -> str:
    return "AIza" + _pick(rng, URLSAFE, 35)


def azure_storage_key(rng: random.Random) -> str:
    return base64.b64encode(rng.randbytes(64)).decode()  # 88 characters, ends in ==


def github_classic(rng: random.Random) -> str:
    return "ghp_" + _pick(rng, ALNUM, 36)


def github_fine_grained(rng: random.Random) -> str:
    return "github_pat_" + _pick(rng, ALNUM, 22) + "_" + _pick(rng, ALNUM, 59)


def github_app(rng: random.Random) -> str:
    return rng.choice(("ghs_", "ghu_")) + _pick(rng, ALNUM, 36)


def gitlab_pat(rng: random.Random) -> str:
    return "glpat-" + _pick(rng, URLSAFE, 20)


def slack_token(rng: random.Random) -> str:
    digits = lambda n: _pick(rng, string.digits, n)  # noqa: E731
    kind = rng.choice(("xoxb", "xoxp"))
    tail = _pick(rng, ALNUM, 24) if kind == "xoxb" else _pick(rng, "0123456789abcdef", 32)
    middle = (
        f"{digits(12)}-{digits(13)}"
        if kind == "xoxb"
        else f"{digits(12)}-{digits(12)}-{digits(13)}"
    )
    return f"{kind}-{middle}-{tail}"


def stripe_key(rng: random.Random) -> str:
    return rng.choice(("sk_live_", "rk_live_")) + _pick(rng, ALNUM, 24 + rng.randrange(75))


def twilio_key(rng: random.Random) -> str:
    return "SK" + _pick(rng, "0123456789abcdef", 32)


def sendgrid_key(rng: random.Random) -> str:
    return "SG." + _pick(rng, URLSAFE, 22) + "." + _pick(rng, URLSAFE, 43)


def openai_key(rng: random.Random) -> str:
    prefix = rng.choice(("sk-proj-", "sk-svcacct-", "sk-admin-"))
    return prefix + _pick(rng, URLSAFE, 74) + "T3BlbkFJ" + _pick(rng, URLSAFE, 74)


def anthropic_key(rng: random.Random) -> str:
    return "sk-ant-api03-" + _pick(rng, URLSAFE, 93) + "AA"


def gemini_key(rng: random.Random) -> str:
    return "AQ.Ab8RN6" + _pick(rng, URLSAFE, 44)


def _private_key(rng: random.Random):
    choice = rng.randrange(3)
    if choice == 0:
        return rsa.generate_private_key(65537, 1024)
    if choice == 1:
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def pem_private_key(rng: random.Random) -> str:
    key = _private_key(rng)
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if not isinstance(key, ed25519.Ed25519PrivateKey) and rng.random() < 0.5
        else serialization.PrivateFormat.PKCS8
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def openssh_private_key(rng: random.Random) -> str:
    return (
        _private_key(rng)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        .decode()
    )


def signed_jwt(rng: random.Random) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": str(uuid.UUID(bytes=rng.randbytes(16))), "iat": rng.randrange(1_700_000_000, 1_800_000_000),
              "role": rng.choice(("admin", "service", "reader"))}  # fmt: skip
    payload = _b64url(json.dumps(claims).encode())
    signature = hmac.new(rng.randbytes(32), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{_b64url(signature.digest())}"


def connection_string(rng: random.Random) -> str:
    scheme = rng.choice(("postgres", "postgresql", "mysql", "mongodb+srv", "redis", "amqps"))
    user = rng.choice(("app", "svc_orders", "admin", "deploy"))
    password = _pick(rng, ALNUM + "!*-_", 12 + rng.randrange(12))
    host = rng.choice(("orders-db.prod.acme-corp.net", "10.2.3.4", "cluster0.ab1cd.mongodb.net"))
    port = {"postgres": 5432, "postgresql": 5432, "mysql": 3306, "redis": 6379, "amqps": 5671}
    where = host if scheme == "mongodb+srv" else f"{host}:{port[scheme]}"
    return f"{scheme}://{user}:{password}@{where}/{rng.choice(('orders', 'app', '0'))}"


def gcp_service_account(rng: random.Random) -> str:
    """The whole key file: the credential is the file (its private key inside)."""
    project = "proj-" + _pick(rng, string.ascii_lowercase + string.digits, 8)
    pem = (
        rsa.generate_private_key(65537, 1024)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return json.dumps({
        "type": "service_account",
        "project_id": project,
        "private_key_id": _pick(rng, "0123456789abcdef", 40),
        "private_key": pem,
        "client_email": f"ci@{project}.iam.gserviceaccount.com",
        "client_id": _pick(rng, string.digits, 21),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/ci%40{project}.iam.gserviceaccount.com",
    }, indent=2)  # fmt: skip


# -- contexts: where a credential sits when a developer pastes it -----------------------------


def _env_name(kind: str) -> str:
    return {
        "aws-access-key": "AWS_ACCESS_KEY_ID", "gcp-api-key": "GOOGLE_API_KEY",
        "github-token": "GITHUB_TOKEN", "gitlab-token": "GITLAB_TOKEN",
        "slack-token": "SLACK_BOT_TOKEN", "stripe-key": "STRIPE_SECRET_KEY",
        "twilio-key": "TWILIO_API_KEY", "sendgrid-key": "SENDGRID_API_KEY",
        "openai-key": "OPENAI_API_KEY", "anthropic-key": "ANTHROPIC_API_KEY",
        "gemini-key": "GEMINI_API_KEY", "jwt": "SESSION_JWT", "connection-string": "DATABASE_URL",
    }.get(kind, "SECRET")  # fmt: skip


def _contexts(kind: str, secret: str, rng: random.Random) -> str:
    name = _env_name(kind)
    one_line = "\n" not in secret
    options: list[Callable[[], str]] = [
        lambda: f"# production settings\nLOG_LEVEL=info\n{name}={secret}\nPORT=8080\n",
        lambda: f"$ cd ~/src/orders\n$ export {name}=\"{secret}\"\n$ make deploy\n",
        lambda: f"settings = {{\n    'region': 'eu-west-1',\n    '{name.lower()}': '{secret}',\n}}\n",
        lambda: json.dumps({"service": "orders", "env": {name: secret, "DEBUG": "0"}}, indent=2),
        lambda: (f"Traceback (most recent call last):\n  File \"app.py\", line 42, in connect\n"
                 f"    client = Client(key=\"{secret}\")\nAuthError: 401 Unauthorized\n"),
        lambda: f"config:\n  retries: 3\n  {name.lower()}: {secret}\n  timeout: 30s\n",
    ]  # fmt: skip
    if not one_line:  # a multi-line credential: pasted as a file or into a heredoc
        options = [
            lambda: f"here is the key file, why does ssh refuse it?\n\n{secret}\n",
            lambda: f"$ cat > ~/.ssh/deploy_key <<'EOF'\n{secret}EOF\n$ chmod 600 ~/.ssh/deploy_key\n",
            lambda: f"```\n{secret}\n```\nthis is what terraform wrote to disk",
        ]  # fmt: skip
    return rng.choice(options)()


def _aws_pair(rng: random.Random) -> tuple[str, str]:
    key, secret = aws_access_key(rng), aws_secret_key(rng)
    text = rng.choice((
        f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\nregion = us-east-1\n",
        f"export AWS_ACCESS_KEY_ID={key}\nexport AWS_SECRET_ACCESS_KEY={secret}\n",
        json.dumps({"AccessKeyId": key, "SecretAccessKey": secret, "Expiration": "2026-12-01"}),
    ))  # fmt: skip
    return key, text


def _azure(rng: random.Random) -> tuple[str, str]:
    key = azure_storage_key(rng)
    account = "st" + _pick(rng, string.ascii_lowercase, 10)
    text = (f"AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName={account};"
            f"AccountKey={key};EndpointSuffix=core.windows.net\n")  # fmt: skip
    return key, text


def _service_account(rng: random.Random) -> tuple[str, str]:
    body = gcp_service_account(rng)
    return body, f"I downloaded this key for CI, is it the right format?\n{body}\n"


KINDS: dict[str, Callable[[random.Random], str]] = {
    "gcp-api-key": gcp_api_key,
    "github-token": lambda rng: rng.choice((github_classic, github_fine_grained, github_app))(rng),
    "gitlab-token": gitlab_pat,
    "slack-token": slack_token,
    "stripe-key": stripe_key,
    "twilio-key": twilio_key,
    "sendgrid-key": sendgrid_key,
    "openai-key": openai_key,
    "anthropic-key": anthropic_key,
    "gemini-key": gemini_key,
    "private-key": pem_private_key,
    "openssh-private-key": openssh_private_key,
    "jwt": signed_jwt,
    "connection-string": connection_string,
}
PAIRED: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "aws-access-key": _aws_pair,
    "azure-storage-key": _azure,
    "gcp-service-account": _service_account,
}
CLAIMED = tuple(sorted((*KINDS, *PAIRED)))


def positives(per_kind: int = 40, seed: int = 22) -> list[Positive]:
    rng = random.Random(seed)
    out = []
    for kind in CLAIMED:
        for _ in range(per_kind):
            if kind in PAIRED:
                secret, text = PAIRED[kind](rng)
            else:
                secret = KINDS[kind](rng)
                text = _contexts(kind, secret, rng)
            out.append(Positive(kind, secret, text))
    return out


# -- negatives -------------------------------------------------------------------------------

VENDOR_EXAMPLES = """\
## Configuring credentials (from the vendors' own documentation)

The AWS documentation uses these example values; they are not real:

    [default]
    aws_access_key_id = AKIAIOSFODNN7EXAMPLE
    aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY

Stripe's API reference signs its examples with a published test key:

    curl https://api.stripe.com/v1/charges -u sk_test_4eC39HqLyjWDarjtT1zdp7dc:

Set `OPENAI_API_KEY=sk-...` or `ANTHROPIC_API_KEY=sk-ant-...` in your shell, and
`GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx` for the CLI. A connection string
looks like `postgres://user:password@localhost:5432/mydb` or
`mongodb://<username>:<password>@cluster0.example.net/`, with your own values.
Put `-----BEGIN PRIVATE KEY-----` ... `-----END PRIVATE KEY-----` in the file named by
`GOOGLE_APPLICATION_CREDENTIALS`.
"""


def _hash_lines(rng: random.Random, n: int) -> str:
    lines = []
    for i in range(n):
        data = rng.randbytes(32)
        lines.append(
            rng.choice((
                f"{hashlib.sha256(data).hexdigest()}  dist/app-{i}.tar.gz",
                f"commit {hashlib.sha1(data).hexdigest()}",
                f"id: {uuid.UUID(bytes=data[:16])}",
                f"etag = \"{hashlib.md5(data).hexdigest()}\"",
                f"fixture = base64.b64decode(\"{base64.b64encode(data * 3).decode()}\")",
                f"assert digest == \"{base64.b64encode(hashlib.sha512(data).digest()).decode()}\"",
            ))
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def _lockfile(rng: random.Random, n: int) -> str:
    packages = {}
    for i in range(n):
        name = "".join(rng.choice(string.ascii_lowercase) for _ in range(6)) + f"-{i}"
        digest = base64.b64encode(hashlib.sha512(rng.randbytes(16)).digest()).decode()
        packages[f"node_modules/{name}"] = {
            "version": f"{rng.randrange(9)}.{rng.randrange(20)}.{rng.randrange(30)}",
            "resolved": f"https://registry.npmjs.org/{name}/-/{name}-1.0.0.tgz",
            "integrity": f"sha512-{digest}",
            "dev": rng.random() < 0.3,
        }
    return json.dumps({"name": "app", "lockfileVersion": 3, "packages": packages}, indent=2)


def _minified_js(rng: random.Random, size: int) -> str:
    words = ["function", "return", "var", "this", "null", "typeof", "void", "new", "Object"]
    parts, total = [], 0
    while total < size:
        ident = _pick(rng, string.ascii_letters, rng.randrange(1, 3))
        piece = rng.choice((
            f"{rng.choice(words)} {ident}=function(e,t){{return e&&t[{rng.randrange(99)}]}};",
            f"{ident}.prototype.{_pick(rng, string.ascii_lowercase, 5)}=function(){{this._{ident}=!0}},",
            f"\"{_pick(rng, ALNUM + '+/', rng.randrange(20, 60))}\",",
            f"{ident}[\"{uuid.UUID(bytes=rng.randbytes(16))}\"]={rng.randrange(10**6)};",
            f"sourceMappingURL=data:application/json;base64,{base64.b64encode(rng.randbytes(48)).decode()}\n",
        ))  # fmt: skip
        parts.append(piece)
        total += len(piece)
    return "".join(parts)


def _installed_sources(limit: int) -> list[str]:
    """Real code, as a developer sends it: the installed packages' own source files."""
    roots = [Path(p) for p in sys.path if p.endswith("site-packages")]
    out, total = [], 0
    for root in roots:
        for package in ("mitmproxy", "aiohttp", "jinja2", "yaml", "redis", "cryptography"):
            for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else ():
                text = path.read_text(errors="replace")
                if "PRIVATE KEY-----" in text:
                    continue  # a test key pasted in a package's source is a credential
                out.append(text)
                total += len(text)
                if total >= limit:
                    return out
    return out


def negatives(seed: int = 5, real_bytes: int = 3_600_000) -> list[str]:
    """At least 5 MB of what developers send every day, with no credential in it."""
    rng = random.Random(seed)
    synthetic = [VENDOR_EXAMPLES] * 20
    synthetic += [_hash_lines(rng, 400) for _ in range(20)]
    synthetic += [_lockfile(rng, 300) for _ in range(6)]
    synthetic += [_minified_js(rng, 40_000) for _ in range(12)]
    return synthetic + _installed_sources(real_bytes)
