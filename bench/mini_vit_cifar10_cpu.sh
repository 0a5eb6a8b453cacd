#!/usr/bin/env bash
# Mini-ViT on real CIFAR-10 (the JPEG copy in ../shared/data) with the seed's full recipe, stopped
# after EPOCHS epochs of its 250-epoch schedule. Prints the run's metrics and the train images/s.
#   bash bench/mini_vit_cifar10_cpu.sh [EPOCHS] [extra overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-1}; shift || true
data_dir=${VITLAB_SHARED_DATA:-$(cd .. && pwd)/shared/data}
python -m vitlab.train experiment=cifar10_mini_vit data=cifar10_jpg hardware=cpu \
    paths.data_dir="$data_dir" paths.log_dir=bench/out task_name=mini_vit_cifar10_cpu \
    trainer.max_epochs="$epochs" callbacks.progress_bar.kind=tqdm "$@"
run=$(ls -td bench/out/mini_vit_cifar10_cpu/runs/* | head -1)
python - "$run" <<'PY'
import json, sys, yaml
run = sys.argv[1]
m = json.load(open(f"{run}/metrics.json"))
cfg = yaml.safe_load(open(f"{run}/config.yaml"))
images = m["global_step"] * cfg["recipe"]["batch_size"]
print(json.dumps(m, indent=2))
print(f"run dir {run}: {images} training images in {m['fit_time_s']} s of fit (validation included) "
      f"= {images / m['fit_time_s']:.1f} img/s; test top-1 {100 * m['test/top1']:.2f} % after {m['epochs']} epoch(s)")
PY
