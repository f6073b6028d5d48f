"""`python -m trainer.export ...`: the same program as `codeparrot export ...`."""

import sys

from trainer.export import main

sys.exit(main())
