"""Where this plugin keeps its state in a pytest run: the ``config.stash`` and ``item.stash``
keys, and :func:`get_run`, the run's :class:`~.session.RunState` made on first use.

Below the hooks (``plugin.py``) and the xdist roles (``xdist.py``), which both read them; it
imports only pytest and the settings record, so the plugin can import it at once.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from ..config import Settings

if TYPE_CHECKING:
    from .fixture import LLMCycle
    from .session import RunState

SETTINGS_KEY = pytest.StashKey[Settings]()
RUN_KEY = pytest.StashKey["RunState"]()  # created when a timing test is about to run (pytest_runtestloop)
FIXTURE_KEY = pytest.StashKey["LLMCycle"]()  # the test's LLMCycle object, on its item
OUTPUTS_KEY = pytest.StashKey[Any]()  # report/history paths, then the messages their writing left
PARALLEL_KEY = pytest.StashKey[dict]()  # stage limit and xdist worker facts, for RunState
AGAINST_KEY = pytest.StashKey[Any]()  # the run's RunOptions (--llmcycle-against and friends)


def get_run(config: pytest.Config) -> "RunState":
    """This run's state, made on first use from the resolved settings."""
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        # imported here: session loads numpy, and runs without timing tests never get here
        from .session import RunState

        run = RunState(config.stash[SETTINGS_KEY], config.rootpath, **config.stash.get(PARALLEL_KEY, {}))
        config.stash[RUN_KEY] = run
    return run
