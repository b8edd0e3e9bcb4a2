"""
Whose profile choice is whose: the key of a (user, workspace)'s choice, and the name of the
file the choices live in (the stores themselves: addons/routing/profile_store.py).
"""

from __future__ import annotations

CHOICES_FILE = "profiles.json"


def choice_key(user: str, workspace: str | None) -> str:
    """A user's choice for one workspace, or for no workspace: nobody else's key."""
    return f"{user.lower()}/{workspace or ''}"


MAX_CHOICES_PER_USER = 100  # workspaces with a choice of their own, per user


class TooManyChoices(ValueError):
    """A user already chose a profile for MAX_CHOICES_PER_USER workspaces."""


def check_room(choices: dict[str, str], user: str, workspace: str | None) -> None:
    """Raise TooManyChoices when a new choice would take `user` past the cap (changing or
    removing an existing choice always fits)."""
    key = choice_key(user, workspace)
    if key in choices:
        return
    prefix = f"{user.lower()}/"
    if sum(1 for k in choices if k.startswith(prefix)) >= MAX_CHOICES_PER_USER:
        raise TooManyChoices(
            f"{user} has chosen profiles for {MAX_CHOICES_PER_USER} workspaces already: "
            "switch one of them back to the default first"
        )
