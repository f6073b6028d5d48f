"""`python -m trainer.evaluate ...`: the same program as `codeparrot evaluate ...`."""

import sys

from trainer.evaluate import main

sys.exit(main())
