"""The benchmarks' tests use the test suite's fixtures, imported from where they are defined:
``tiny_models`` (tests/conftest.py) and ``server`` (tests/integration/conftest.py).

Importing a fixture into a conftest registers it for this folder, so neither fixture is copied.
The price: session fixtures are cached per registration, so a run of both folders builds the tiny
models once for tests/ and once here (about 15 s). ``pytest_plugins`` would not avoid that: pytest
refuses it outside the root conftest, and a root conftest naming tests' conftest modules loads each
twice (as a plugin and as a conftest), with the same two builds."""

from tests.conftest import tiny_models
from tests.integration.conftest import server

__all__ = ["server", "tiny_models"]
