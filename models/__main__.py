"""`python -m models`: the model commands without Discord."""

import sys

from models.cli import main

sys.exit(main())
