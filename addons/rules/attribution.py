"""
Whose session and which repository a request belongs to, from what the clients themselves
send (never a guess): each client's own session header, and Codex's turn metadata, which
names the workspace's git remotes. Pure parsing.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import urlsplit

from addons.rules.genai import digest

# Each client's session header, first found wins: Claude Code, Codex, then the others
# (Copilot in VS Code and its CLI, OpenCode, Kilo, Goose, older VS Code)
SESSION_HEADERS = (
    "x-claude-code-session-id", "session-id", "session_id", "x-session-id", "x-interaction-id",
    "x-client-session-id", "x-opencode-session", "x-session-affinity", "x-kilocode-taskid",
    "agent-session-id", "vscode-sessionid",
)  # fmt: skip
SESSION_LIMIT = 128
TURN_METADATA = "x-codex-turn-metadata"
_SESSION_RANK = {name.encode(): i for i, name in enumerate(SESSION_HEADERS)}
# A client's session key as the known clients spell it (a UUID, or hex and dashes)
_SESSION_SHAPE = re.compile(r"[0-9A-Fa-f][0-9A-Fa-f-]{7,63}")
_SCP_LIKE = re.compile(r"^[\w.-]+@([\w.-]+):(.+)$")  # git@github.com:owner/name.git
_SEGMENT = re.compile(r"[\w.-]{1,100}")


def session_from(fields: list[tuple[bytes, bytes]]) -> str | None:
    """The client's own session key from its headers (the first of SESSION_HEADERS it sends,
    in one walk of the fields), or None."""
    session, rank = None, len(_SESSION_RANK)
    for name, value in fields:
        if (r := _SESSION_RANK.get(name.lower())) is not None and r < rank and value.strip():
            session, rank = value, r
    return None if session is None else session.decode("utf-8", "replace").strip()[:SESSION_LIMIT]


def shown_session(session: str | None, key: bytes | None = None) -> str | None:
    """A session key as a log or a span may carry it: itself in the clients' shape (a UUID),
    else a digest (a client may put anything in a header, a token too): keyed with `key`
    (the audit trail's, so nobody without it can test a guess), else a plain one."""
    if session is None or _SESSION_SHAPE.fullmatch(session):
        return session
    if key is not None:
        return "h:" + digest(key, session)
    return "h:" + hashlib.sha256(session.encode("utf-8", "replace")).hexdigest()[:16]


def repo_from_turn_metadata(text: str | bytes | None) -> str | None:
    """`host/owner/name` of the first workspace's remote (origin first) in Codex's turn
    metadata (`{"workspaces": {path: {"associated_remote_urls": {"origin": url}}}}`)."""
    if not text:
        return None
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError):
        return None
    workspaces = metadata.get("workspaces") if isinstance(metadata, dict) else None
    if not isinstance(workspaces, dict):
        return None
    for workspace in workspaces.values():
        remotes = workspace.get("associated_remote_urls") if isinstance(workspace, dict) else None
        if isinstance(remotes, dict):
            ordered = [remotes.get("origin"), *remotes.values()]
        elif isinstance(remotes, list):
            ordered = list(remotes)
        else:
            continue
        for url in ordered:
            if isinstance(url, str) and (repo := repo_name(url)):
                return repo
    return None


def repo_from_message(message: Any) -> str | None:
    """The repository of a Codex `response.create` message (its client_metadata)."""
    metadata = message.get("client_metadata") if isinstance(message, dict) else None
    if isinstance(metadata, dict):
        return repo_from_turn_metadata(metadata.get(TURN_METADATA))
    return None


def repo_name(url: str) -> str | None:
    """`host/owner/name` of a git remote, without credentials, port or `.git` (`owner` may be
    a nested group); None for what is not a hosted repository's URL (a local path)."""
    url = url.strip()
    if m := _SCP_LIKE.match(url):
        host, path = m.group(1), m.group(2)
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http", "ssh", "git") or not parts.hostname:
            return None
        host, path = parts.hostname, parts.path
    segments = [s for s in path.strip("/").removesuffix(".git").split("/") if s]
    if not 2 <= len(segments) <= 8 or not all(_SEGMENT.fullmatch(s) for s in segments):
        return None
    return "/".join([host.lower(), *segments])  # (a GitLab group may nest: all of it)
