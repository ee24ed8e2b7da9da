#!/usr/bin/env bash
# The Python packages benchmarks/gpu_all.sh needs that a bare GPU machine with PyTorch may lack, as wheels in
# .whl/ (git-ignored) for Python 3.12 on x86-64 Linux, fetched HERE (the GPU machine may reach no index).
#   bash benchmarks/gpu_wheels.sh          # then carry .whl to the GPU machine; gpu_all.sh installs it
# Versions: the ones ablate's CI tests with (TRL pinned at 1.16.0, the version its conformance suite checks).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  hydra-core==1.3.8 omegaconf==2.3.1 trl==1.16.0 datasets==5.2.0 submitit==1.5.4 peft==0.21.2 \
  transformers==5.24.0 tokenizers==0.23.3 accelerate==1.15.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 \
  fsspec==2026.9.0 gguf==0.19.0
$PY -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3   # a source release only: built here
ls -la .whl
du -sh .whl
