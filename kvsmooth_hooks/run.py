"""``python -m kvsmooth_hooks.run ...`` (also under ``torchrun`` / ``accelerate launch``): the experiment runner."""

import sys

from .runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
