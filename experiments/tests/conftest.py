"""Tests of the experiment scripts (run by CI in their own step: ``python -m pytest -q -m "" experiments/tests``);
they use the test suite's tiny models and data writers from ``tests/``."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "experiments"), str(ROOT)]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads (see tests/conftest.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
