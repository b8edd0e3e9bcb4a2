from __future__ import annotations

import pytest

from tests.system.image import build_image


@pytest.fixture(scope="session")
def image(tmp_path_factory):
    """deploy/Dockerfile built once for every test that runs the image."""
    yield from build_image(tmp_path_factory.mktemp("image"))
