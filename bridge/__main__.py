"""`python -m bridge` runs the command-line interface."""

from bridge.cli import main

raise SystemExit(main())
