"""Shared by the tests of the step-splitting teams (test_step_team.py,
test_row_team.py)."""

import pytest

from clstm import _scan


@pytest.fixture
def team_at_any_size():
    """A team whatever the work per step (the default wants enough work per
    thread, so the tests' small shapes would run on one)."""
    previous = _scan.set_team_min_work(0)
    yield
    _scan.set_team_min_work(previous)
