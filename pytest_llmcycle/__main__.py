"""``python -m pytest_llmcycle``: the ``llmcycle`` command."""
from .cli import main

raise SystemExit(main())
