"""`python -m amnesia.cli …`: the same as the `amnesia` console script."""

import sys

from amnesia.cli import main

sys.exit(main())
