"""Options of the fuzz suite: ``--fuzz-long`` (or QUANTGRAPH_FUZZ_LONG=1) runs the long run."""

from __future__ import annotations

import os

import pytest

FAST_CASES = 40
LONG_CASES = 1200


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fuzz")
    group.addoption("--fuzz-long", action="store_true", help=f"run the long fuzz run ({LONG_CASES} cases)")
    group.addoption("--fuzz-cases", type=int, default=None, help="number of generated cases (overrides)")
    group.addoption("--fuzz-seed", type=int, default=0, help="seed of the case generators")


@pytest.fixture(scope="session")
def fuzz_config(request) -> dict:
    def opt(name, default=None):
        try:
            return request.config.getoption(name)
        except ValueError:  # the option is only registered when this folder is named on the command line
            return default

    long_run = bool(opt("--fuzz-long", False)) or os.environ.get("QUANTGRAPH_FUZZ_LONG") == "1"
    cases = (
        opt("--fuzz-cases")
        or int(os.environ.get("QUANTGRAPH_FUZZ_CASES", "0"))
        or (LONG_CASES if long_run else FAST_CASES)
    )
    return {"cases": cases, "seed": opt("--fuzz-seed", 0) or 0, "long": long_run}
