"""``python -m megadepth``: what the DeepSpeed launcher runs on every rank."""

import sys

from megadepth.cli import main

sys.exit(main())
