"""`python -m train ...` (what torchrun launches) = dcam-train."""
import sys

from .cli import main

sys.exit(main())
