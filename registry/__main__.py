"""`python -m registry` is the `trustyard` command."""

import sys

from registry.cli import main

sys.exit(main())
