"""Sessions and repositories as the clients say them: each client's own session header (first
found in a fixed order), a digest for what is not a session key's shape, and Codex's turn
metadata read for `host/owner/name` without credentials."""

from __future__ import annotations

import json

import pytest

from addons.rules.attribution import repo_from_message
from addons.rules.attribution import repo_from_turn_metadata
from addons.rules.attribution import repo_name
from addons.rules.attribution import session_from
from addons.rules.attribution import shown_session


def test_each_clients_session_header_in_order():
    assert (
        session_from([(b"Session-Id", b"codex-1"), (b"X-Claude-Code-Session-Id", b"cc-1")])
        == "cc-1"
    )
    assert session_from([(b"x-interaction-id", b"vscode-1")]) == "vscode-1"  # Copilot in VS Code
    assert session_from([(b"X-Client-Session-Id", b"cli-1")]) == "cli-1"  # Copilot CLI
    assert session_from([(b"X-KILOCODE-TASKID", b"k")]) == "k"
    assert session_from([(b"content-type", b"x")]) is None
    assert len(session_from([(b"session-id", b"s" * 500)])) == 128


def test_a_session_key_not_in_a_clients_shape_is_a_digest():
    uuid = "01a2534e-487c-70b3-a4ab-c46e5613d9f8"
    assert shown_session(uuid) == uuid
    assert shown_session("ghp_notasession").startswith("h:")


@pytest.mark.parametrize(
    "url, repo",
    [
        ("https://github.com/acme/widgets.git", "github.com/acme/widgets"),
        ("https://user:secret@github.com/acme/widgets", "github.com/acme/widgets"),
        ("git@gitlab.example.com:team/sub/proj.git", "gitlab.example.com/team/sub/proj"),
        ("ssh://git@git.example.com:2222/o/n.git", "git.example.com/o/n"),
        ("/home/dev/repo", None),
        ("https://github.com/only-owner", None),
    ],
)
def test_a_remote_is_named_host_owner_name(url, repo):
    assert repo_name(url) == repo


def test_codex_turn_metadata_names_its_workspaces_remote():
    # as Codex 0.x sends it (tests/e2e/test_real_clients.py reads it from the real CLI)
    metadata = {"session_id": "s", "workspaces": {"/work/repo": {
        "associated_remote_urls": {"upstream": "https://github.com/up/stream.git",
                                   "origin": "https://github.com/acme/widgets.git"},
        "latest_git_commit_hash": "6901be3", "has_changes": False}}}  # fmt: skip
    assert repo_from_turn_metadata(json.dumps(metadata)) == "github.com/acme/widgets"
    message = {"type": "response.create",
               "client_metadata": {"x-codex-turn-metadata": json.dumps(metadata)}}  # fmt: skip
    assert repo_from_message(message) == "github.com/acme/widgets"
    assert repo_from_turn_metadata('{"session_id": "s"}') is None
    assert repo_from_turn_metadata("not json") is None
