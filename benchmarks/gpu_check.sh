#!/usr/bin/env bash
# The GPU checks of issue 15 as one short run for a lent GPU node (the session's `device` tool), from the
# repository root: the CUDA tests, then benchmarks/bench_gpu.py (training step beside the authors' code,
# GWAS products on the GPU beside the node's CPU cores, both projected to the paper's / UK Biobank's
# scale). About 4 minutes on one H100; needs only the node's python3 with torch, numpy, pandas, scipy,
# pyarrow, statsmodels and pytest (no Dagster, DuckDB or nilearn: the tests run without conftest).
#
# The authors' code is not shipped: to measure it too, put an unmodified checkout of
# github.com/ZhiGroup/UDIP-ViT at .authors/UDIP-ViT (ignored by git: `echo /.authors/ >> .git/info/exclude`)
# and carry that folder. Results land in $OUT (the device tool's) or /tmp/udip_gpu_check.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/udip_gpu_check}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" \
  | tee -a "$out/gpu.txt"
timeout 240 python3 -m pytest --noconftest -p no:cacheprovider -q -k "cuda or varlen" \
  udip_assets_tests/model/test_vit_ae.py udip_assets_tests/genetics/test_gwas.py 2>&1 | tee "$out/cuda_tests.log"
authors=()
[ -f .authors/UDIP-ViT/models/model_avg_pool.py ] && authors=(--authors-repo "$PWD/.authors/UDIP-ViT")
(cd benchmarks && timeout 420 python3 bench_gpu.py "${authors[@]}" --out "$out/gpu.json" \
  --results-md "$out/RESULTS_gpu.md") 2>&1 | tee "$out/bench.log"
