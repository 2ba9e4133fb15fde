"""Run the `funnel` command: python -m funnel.cli <command>."""

import sys

from funnel.cli.main import main

sys.exit(main())
