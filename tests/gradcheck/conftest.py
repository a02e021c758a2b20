from pathlib import Path

import pytest

from gradoctor.gradcheck.discovery import discover

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "gradcheck"
CORRECT = ASSETS / "correct_layers.py"
BUGGY = ASSETS / "buggy_layers.py"


@pytest.fixture(scope="session")
def buggy_cases():
    return {c.name: c for c in discover(BUGGY)}


@pytest.fixture(scope="session")
def correct_cases():
    return {c.name: c for c in discover(CORRECT)}
