"""Makes ablate's sweeps/ folder a Hydra config group: `python -m ablate -m +sweeps=<name>`.

The folder is the checkout's top-level sweeps/ or, after a wheel install, the installed ablate/sweeps
(ablate.paths). A user's own sweep files sit in their own folder: `--config-dir <dir>` or
`hydra.searchpath=[file://<dir>]` (README, "Installing and your own configs").
"""

# No `from __future__ import annotations`: see local.py.

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from ablate.paths import SWEEPS_DIR


class AblateSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if SWEEPS_DIR.is_dir():
            search_path.append(provider="ablate-sweeps", path=f"file://{SWEEPS_DIR.parent}")
