"""The routing rules of deploy/config.example.yaml, as an operator would uncomment them: they
load, and for each rule `explain` says what the proxy then does with such a request."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.support import ALICE
from tests.support import BOB
from tests.support import ROOT
from tests.support import ThreadedGateway
from tests.support import base_env
from tests.support import proxy_client

EXAMPLE = ROOT / "deploy" / "config.example.yaml"


def example_rules() -> dict:
    """The commented routing-rules block of the example, uncommented."""
    text = EXAMPLE.read_text()
    start = text.index("# --- Routing rules and profiles")
    end = text.index("# Worker processes sharing the listening port")
    lines = [ln[2:] for ln in text[start:end].splitlines()[1:] if ln.startswith("# ")]
    return yaml.safe_load("\n".join(ln for ln in lines if not ln.startswith(("Named", "Groups",
                          "The admin", "globs", "group,", "Profiles", "the rules"))))  # fmt: skip


@pytest.fixture
def example(make_proxy, gateway, tmp_path):
    standalone = ThreadedGateway(prefix="/api/v2/ai-gateway").start()
    config = example_rules()
    config["gateways"]["coder"]["url"] = gateway.url
    config["gateways"]["standalone"] = {"target": f"{standalone.url}/api/v2/ai-gateway"}
    config.pop("profile_store", None)
    config["groups"] = {"ml-team": ["alice"]}
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(config))
    p = make_proxy("--config", str(path), gateway="")
    yield p, path, standalone
    standalone.stop()


CASES = [  # one request per rule: (rule, token, workspace, model, url)
    ("fast-workspaces", ALICE, "fast-1", "gpt-4o", "https://api.openai.com/v1/chat/completions"),
    ("no-reasoning-models", BOB, "w", "o3-mini", "https://api.openai.com/v1/chat/completions"),
    ("two-gateways", ALICE, "w", "gpt-4o", "https://api.githubcopilot.com/chat/completions"),
    ("careful-anthropic", ALICE, "w", "claude-x", "https://api.anthropic.com/v1/messages"),
]


def test_every_rule_of_the_example_is_explained_as_the_proxy_then_does(example, gateway):
    p, path, standalone = example
    names = {r["name"] for r in example_rules()["rules"]}
    names |= {r["name"] for rules in example_rules()["profiles"].values() for r in rules}
    covered = {c[0] for c in CASES} | {"files-stay-direct", "fast-openrouter"}
    assert names == covered  # a new example rule needs a case here
    for rule, token, workspace, model, url in CASES:
        user = "alice" if token == ALICE else "bob"
        out = subprocess.run(
            [sys.executable, "-m", "proxy", "explain", "--config", str(path), "--user", user,
             "--workspace", workspace, "--model", model, url],
            capture_output=True, text=True, env=base_env(), timeout=30,
        ).stdout  # fmt: skip
        assert out.startswith(f"rule:     {rule} ("), out
        before = len(gateway.records) + len(standalone.records)
        with proxy_client(p, token=token, user=workspace) as c:
            r = c.post(url, json={"model": model, "max_tokens": 1, "messages": []})
        if "answer:   " in out:
            assert str(r.status_code) == out.split("answer:   ", 1)[1][:3]
            assert len(gateway.records) + len(standalone.records) == before
        else:
            upstream = out.split("upstream: ", 1)[1].splitlines()[0].strip()
            got = max(gateway.records + standalone.records, key=lambda rec: rec.time)
            assert upstream.endswith(got.path), (rule, upstream, got.path)


def test_explain_with_an_unknown_profile_shows_the_default_in_force_as_the_proxy_applies_it(
    example, gateway
):
    """A profile that does not exist (mistyped, or removed since it was chosen) gives way to
    the default one, in the proxy and in `explain` alike."""
    p, path, standalone = example
    url = "https://api.anthropic.com/v1/messages"
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "explain", "--config", str(path), "--user", "alice",
         "--workspace", "w", "--model", "claude-x", "--profile", "nosuch", url],
        capture_output=True, text=True, env=base_env(), timeout=30,
    ).stdout  # fmt: skip
    default = example_rules()["default_profile"]
    assert out.startswith("rule:     careful-anthropic (profile "), out
    assert f"profile:  {default} (default); 'nosuch' is not a profile" in out, out
    with proxy_client(p, token=ALICE, user="w") as c:  # this workspace chose no profile
        c.post(url, json={"model": "claude-x", "max_tokens": 1, "messages": []})
    got = max(gateway.records + standalone.records, key=lambda rec: rec.time)
    assert out.split("upstream: ", 1)[1].splitlines()[0].strip().endswith(got.path)
