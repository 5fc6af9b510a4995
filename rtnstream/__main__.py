"""``python -m rtnstream``: the command-line entry point."""

from rtnstream.cli import main

raise SystemExit(main())
