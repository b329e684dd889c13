"""``python -m apcnn`` (and ``torchrun -m apcnn``) run the command line."""

import sys

from .cli import main

sys.exit(main())
