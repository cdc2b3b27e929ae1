"""`python -m gpt2_apps ...` = `gpt2 ...`."""

import sys

try:
    from gpt2_apps.cli import main  # standard library only: a Ctrl-C from here on is main's one line, exit 130
except KeyboardInterrupt:
    sys.stderr.write("gpt2: interrupted.\n")
    sys.exit(130)

sys.exit(main())
