"""`python -m xos`: the `xos` command."""

import sys

from xos.cli.main import main

sys.exit(main())
