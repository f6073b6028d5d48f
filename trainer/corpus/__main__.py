"""`python -m trainer.corpus ...`: the same program as `codeparrot corpus ...`."""

import sys

from trainer.corpus import main

sys.exit(main())
