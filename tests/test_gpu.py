"""CUDA checks (marker gpu): the same cell on the GPU as on the CPU, and the bf16 path.

They need a CUDA device and are skipped without one; results of the last run on a lent H100 are
recorded in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import json

import pytest
import torch

from ablate.sweep.run import run_cell

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def test_cell_on_cuda_matches_cpu(compose_cfg, tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "trainer.max_steps=30", "data.n_heldout_per_slice=64"]
    cpu = run_cell(compose_cfg([*overrides, "device=cpu"]), tmp_path / "cpu")
    gpu = run_cell(compose_cfg([*overrides, "device=cuda"]), tmp_path / "gpu")
    cell = next((tmp_path / "gpu" / "cells").iterdir())
    first_eval = json.loads((cell / "eval_log.jsonl").read_text().splitlines()[0])
    assert abs(first_eval["heldout/logratio_margin"]) < 1e-3  # step 0: policy == reference on the GPU too
    # TF32/cuBLAS kernels differ from CPU ones: the runs agree to within float noise, pair for pair
    # almost everywhere, so accuracies may differ by a pair or two at most.
    pairs = gpu["heldout/pairs"]
    for key in ("heldout/avglogp_accuracy", "heldout/logratio_accuracy"):
        assert abs(gpu[key] - cpu[key]) <= 2 / pairs, key
    assert gpu["heldout/avglogp_margin"] == pytest.approx(cpu["heldout/avglogp_margin"], rel=1e-2, abs=1e-3)


def test_bfloat16_cell_on_cuda(compose_cfg, tiny_overrides, tmp_path):
    metrics = run_cell(compose_cfg([*tiny_overrides, "device=cuda", "model.dtype=bfloat16"]), tmp_path)
    assert all(v == v for v in metrics.values())  # no NaN
    assert metrics["heldout/pairs"] == 32
