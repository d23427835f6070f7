"""``python -m squeal.cli``: the same as ``squeal``."""

from squeal.cli.commands import main

raise SystemExit(main())
