"""ablate installed from its wheel, run from a directory that is not the checkout.

The wheel is built from a copy of the checkout and installed with `pip --target` into a temp folder
that comes first on PYTHONPATH, so that the editable install of the checkout cannot answer for it
(asserted: ablate and its Hydra plugin import from the installed folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import TINY

pytestmark = pytest.mark.slow

TWO_STEPS = [o for o in TINY if not o.startswith(("trainer.max_steps", "data."))] + [
    "trainer.max_steps=2", "trainer.eval_every=2"]
# A user's own data config, in their own folder, composed with the shipped ones through --config-dir.
USER_DATA = """\
defaults:
  - schema_verbosity_trap
  - _self_
n_train: 48
n_heldout_per_slice: 8
"""


def _copy_checkout(repo_root: Path, dest: Path) -> Path:
    skip = shutil.ignore_patterns(".git", ".venv", "outputs", "build", "*.egg-info", "__pycache__", "wandb")
    shutil.copytree(repo_root, dest, ignore=skip)
    return dest


@pytest.fixture(scope="module")
def installed(repo_root, tmp_path_factory) -> dict:
    """Build the wheel and install it, without dependencies, into a fresh folder."""
    work = tmp_path_factory.mktemp("wheel")
    source = _copy_checkout(repo_root, work / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(work / "dist"), str(source)], check=True, capture_output=True, timeout=120)
    (wheel,) = (work / "dist").glob("ablate_po-*.whl")  # the distribution ablate-po (ablate.paths.DISTRIBUTION)
    # the sdist too, with setuptools' own PEP 517 backend (what `python -m build --sdist` would call)
    build_sdist = f"from setuptools import build_meta; build_meta.build_sdist({str(work / 'dist')!r})"
    subprocess.run([sys.executable, "-c", build_sdist], cwd=source, check=True, capture_output=True, timeout=120)
    (sdist,) = (work / "dist").glob("ablate_po-*.tar.gz")
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=120)
    env = {**os.environ, "PYTHONPATH": str(site)}
    return {"wheel": wheel, "sdist": sdist, "site": site, "env": env, "cwd": tmp_path_factory.mktemp("elsewhere")}


def run(installed: dict, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_the_wheel_ships_conf_sweeps_and_every_module(installed, repo_root):
    """pyproject.toml lists packages by hand (conf/ is mapped into ablate/): a new module folder or config group
    left out of that list fails here."""
    wheel = zipfile.ZipFile(installed["wheel"])
    names = set(wheel.namelist())
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "\nName: ablate-po\n" in wheel.read(metadata).decode()  # a name free on the package index
    assert "ablate/__main__.py" in names  # the import package is still `ablate`
    assert "ablate/train/embedded_warm.safetensors" in names  # the embedded model's shipped weights
    for folder in ("conf", "sweeps"):
        expected = {f"ablate/{folder}/{p.relative_to(repo_root / folder).as_posix()}"
                    for p in (repo_root / folder).rglob("*.yaml")}
        assert expected and expected == {n for n in names if n.startswith(f"ablate/{folder}/")}
    for package in ("ablate", "hydra_plugins"):
        modules = {p.relative_to(repo_root).as_posix() for p in (repo_root / package).rglob("*.py")}
        assert modules and modules <= names, sorted(modules - names)


def test_the_sdist_carries_conf_sweeps_and_the_sources(installed, repo_root):
    with tarfile.open(installed["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    for folder in ("conf", "sweeps", "ablate", "hydra_plugins"):
        expected = {p.relative_to(repo_root).as_posix() for p in (repo_root / folder).rglob("*")
                    if p.suffix in (".yaml", ".py") and "__pycache__" not in p.parts}
        assert expected and expected <= names, sorted(expected - names)[:10]


def test_installed_ablate_runs_a_cell_and_a_saved_sweep_from_another_directory(installed):
    site = installed["site"]
    where = run(installed, sys.executable, "-c",
                "import ablate, ablate.paths, hydra_plugins.ablate_launcher.searchpath as s;"
                "print(ablate.__file__); print(ablate.paths.CONF_DIR); print(s.__file__)")
    assert all(Path(line).is_relative_to(site) for line in where.stdout.split()), where.stdout

    helped = run(installed, str(site / "bin" / "ablate"), "--help")
    assert "ablate status" in helped.stdout

    # One cell, with a data config from the user's own folder (--config-dir)
    user = installed["cwd"] / "my_configs"
    (user / "data").mkdir(parents=True)
    (user / "data" / "small_trap.yaml").write_text(USER_DATA)
    cell = run(installed, sys.executable, "-m", "ablate", "--config-dir", str(user), "data=small_trap", *TWO_STEPS,
               "hydra.run.dir=one_cell")
    # stderr is a pipe here, as under SLURM: whole progress lines, no carriage-return frames
    assert "\r" not in cell.stderr and "dpo r=8 seed=0: step 2/2 (100%)" in cell.stderr, cell.stderr[-2000:]
    (metrics,) = (installed["cwd"] / "one_cell" / "cells").glob("*/metrics.json")
    assert json.loads(metrics.read_text())["step"] == 2
    assert json.loads(metrics.read_text())["heldout/pairs"] == 16  # the user's n_heldout_per_slice, 2 slices

    # The shipped sweep file, narrowed to one cell on the command line
    run(installed, sys.executable, "-m", "ablate", "-m", "+sweeps=verbosity_trap_2x2x3", "objective=dpo",
        "lora.r=8", "seed=0", *TWO_STEPS, "data.n_train=48", "data.n_heldout_per_slice=8",
        "hydra.sweep.dir=saved_sweep")
    sweep = json.loads((installed["cwd"] / "saved_sweep" / "sweep.json").read_text())
    assert len(sweep["cells"]) == 1
    (cell,) = sweep["cells"]
    status = json.loads((installed["cwd"] / "saved_sweep" / "cells" / cell["cell_id"] / "status.json").read_text())
    assert status["state"] == "done"


def test_the_review_notebook_runs_on_the_installed_package(installed, repo_root, monkeypatch):
    """The notebook from another directory, its kernel importing ablate from the wheel's install."""
    import nbclient
    import nbformat
    sweep_dir = installed["cwd"] / "saved_sweep"
    if not (sweep_dir / "report" / "summary.json").exists():  # run alone: make the sweep first
        run(installed, sys.executable, "-m", "ablate", "-m", "+sweeps=verbosity_trap_2x2x3", "objective=dpo",
            "lora.r=8", "seed=0", *TWO_STEPS, "data.n_train=48", "data.n_heldout_per_slice=8",
            "hydra.sweep.dir=saved_sweep")
    monkeypatch.setenv("PYTHONPATH", installed["env"]["PYTHONPATH"])  # the kernel inherits os.environ
    monkeypatch.setenv("ABLATE_SWEEP_DIR", str(sweep_dir))
    notebook = nbformat.read(repo_root / "notebooks" / "review_sweep.ipynb", as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import ablate; print(ablate.__file__)"))
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(installed["cwd"])}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    where = Path(notebook.cells[-1].outputs[0]["text"].strip())
    assert where.is_relative_to(installed["site"]), where
