"""`python -m recray COMMAND ...`, the same as the installed `recray` script."""

import sys

from recray.commands import main

sys.exit(main())
