"""``python -m refinenet.cli``: the ``refinenet`` command without the installed console script."""

from refinenet.cli import main

raise SystemExit(main())
