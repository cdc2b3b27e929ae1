"""`python -m gpt2_apps.serve`: the same as `gpt2 serve`."""

import sys

from gpt2_apps.serve import main

sys.exit(main())
