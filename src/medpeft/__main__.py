"""``python -m medpeft``: the command line (also ``accelerate launch -m medpeft train ...``)."""

import sys

from medpeft.cli import main

sys.exit(main())
