"""The test suite's fixtures, for tests/ and benchmarks/tests alike, registered once here so that a
session fixture (the tiny model repository, the shared servers) is built once per run:
``tests/fixtures.py`` (model folders) and ``tests/integration/servers.py`` (server processes)."""

pytest_plugins = ["tests.fixtures", "tests.integration.servers"]
