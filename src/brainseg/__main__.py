"""``python -m brainseg``: the same as the ``brainseg`` command."""

import sys

from brainseg.cli.main import main

sys.exit(main())
