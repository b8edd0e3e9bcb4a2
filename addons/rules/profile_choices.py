"""
Whose profile choice is whose: the key of a (user, workspace)'s choice, and the name of the
file the choices live in (the stores themselves: addons/routing/profile_store.py).
"""

from __future__ import annotations

CHOICES_FILE = "profiles.json"


def choice_key(user: str, workspace: str | None) -> str:
    """A user's choice for one workspace, or for no workspace: nobody else's key."""
    return f"{user.lower()}/{workspace or ''}"
