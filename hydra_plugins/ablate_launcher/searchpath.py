"""Makes the repository's sweeps/ folder a Hydra config group: `python -m ablate -m +sweeps=<name>`."""

# No `from __future__ import annotations`: see local.py.

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

REPO_ROOT = Path(__file__).resolve().parents[2]


class AblateSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if (REPO_ROOT / "sweeps").is_dir():
            search_path.append(provider="ablate-sweeps", path=f"file://{REPO_ROOT}")
