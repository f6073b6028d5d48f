"""`python -m trainer.finetune ...`: the same program as `codeparrot finetune ...`."""

import sys

from trainer.finetune import main

sys.exit(main())
