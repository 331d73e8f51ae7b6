"""``python -m torchdiffusion ...``: the same as the ``torchdiffusion`` command."""

import sys

from .cli import main

sys.exit(main())
