"""`python -m gpt2_apps ...` = `gpt2 ...`."""

import sys

from gpt2_apps.cli import main

sys.exit(main())
