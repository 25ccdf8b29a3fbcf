"""The end-to-end fixtures the console's browser test shares with tests/e2e."""

from tests.e2e.conftest import containers_config, e2e_tmp  # noqa: F401 - fixtures
