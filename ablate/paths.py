"""Where ablate's own config folders are: inside the installed package, or at the top of a checkout.

The repository keeps conf/ and sweeps/ at its top level; a wheel or a plain `pip install .` ships them
as ablate/conf and ablate/sweeps (pyproject.toml maps them). An editable install imports ablate from
the checkout, where ablate/conf does not exist, so the top-level folders are used.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The distribution's name on the package index (`pip install ablate-po`): `ablate` there is an unrelated project.
# The import package and the console script are `ablate`.
DISTRIBUTION = "ablate-po"


def shipped_dir(name: str) -> Path:
    """`conf` or `sweeps` of this ablate: the installed copy first, else the checkout's top-level folder."""
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else PACKAGE_DIR.parent / name


CONF_DIR = shipped_dir("conf")
SWEEPS_DIR = shipped_dir("sweeps")
