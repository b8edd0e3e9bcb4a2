from __future__ import annotations

import json

import pytest

from addons.rules.provider_errors import api_family
from addons.rules.provider_errors import error_body


@pytest.mark.parametrize(
    "provider, host, family",
    [
        ("openai", "api.openai.com", "openai"),
        ("copilot-business", "api.business.githubcopilot.com", "openai"),
        ("anthropic", "api.anthropic.com", "anthropic"),
        ("gemini", "generativelanguage.googleapis.com", "gemini"),
        (None, "generativelanguage.googleapis.com", "gemini"),
    ],
)
def test_the_api_family_of_a_request(provider, host, family):
    assert api_family(provider, host) == family


def test_each_family_gets_its_own_error_shape():
    assert json.loads(error_body("openai", 403, "no")) == {
        "error": {"message": "no", "type": "permission_denied", "code": "policy_denied",
                  "param": None}
    }  # fmt: skip
    assert json.loads(error_body("anthropic", 403, "no")) == {
        "type": "error", "error": {"type": "permission_error", "message": "no"}
    }  # fmt: skip
    assert json.loads(error_body("gemini", 403, "no")) == {
        "error": {"code": 403, "message": "no", "status": "PERMISSION_DENIED"}
    }
