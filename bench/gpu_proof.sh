#!/usr/bin/env bash
# The GPU proof (bench/gpu_proof.py): compiled bf16 / fp16+GradScaler steps of every family with the
# flash SDPA backend asserted where eligible, the vitlab.bench table against timm with MFU, and
# Mini-ViT on the CIFAR-10 JPEG copy for 10 of its 250 epochs beside the seed's log. About 8 minutes
# on one H200; results (summary.md, results.json, bench.md, bench.csv, log.txt) go into OUT_DIR.
#
#   bash bench/gpu_proof.sh OUT_DIR            # on a GPU machine
#   bash bench/gpu_proof.sh OUT_DIR --tiny     # end to end on CPU, tiny sizes (tests/test_gpu_proof.py)
#
# Prepared on a machine with the project installed, then carried with the working tree:
#   pip download --no-deps hydra-core==1.3.8 omegaconf==2.3.1 -d .whl       # .whl/ is git-ignored
#   pip wheel --no-deps antlr4-python3-runtime==4.9.3 -w .whl               # PyPI has only its sdist
#   python bench/gpu_proof.py pack-data --root ../shared/data/cifar10-jpg \
#       --out bench/out/gpu_proof_data/cifar10_jpg.npz                       # ~55 MB of JPEG bytes
# and run through the device tool with carry [".whl", "bench/out/gpu_proof_data"] and the command
#   PYTHONUNBUFFERED=1 bash bench/gpu_proof.sh $OUT
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash bench/gpu_proof.sh OUT_DIR [--tiny] [extra options of bench/gpu_proof.py run]}
shift
mkdir -p "$out"
py=${PYTHON:-$(command -v python3 || command -v python)}  # PYTHON=<interpreter> picks another

# The GPU machine's Python lacks Hydra and OmegaConf: install the carried wheels beside it.
if ! "$py" -c "import hydra, omegaconf" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "error: hydra-core/omegaconf missing and no wheels in .whl/ (see the header of $0)" >&2; exit 2; }
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_proof_site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/gpu_proof_site${PYTHONPATH:+:$PYTHONPATH}
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
"$py" bench/gpu_proof.py run --out "$out" "$@" 2>&1 | tee "$out/log.txt"
exit "${PIPESTATUS[0]}"
