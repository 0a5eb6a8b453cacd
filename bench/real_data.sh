#!/usr/bin/env bash
# First real-data accuracies: short but complete schedules on the CIFAR-10 JPEG copy
# (../shared/data/cifar10-jpg) under protocol=seed, the test top-1 scored after every epoch.
#
#   bash bench/real_data.sh                      # finishes what fits before DEADLINE (UTC, default 10:15)
#   DEADLINE=11:30 bash bench/real_data.sh
#   REAL_DATA_SMOKE=1 bash bench/real_data.sh    # 2 steps per model: checks the script, measures nothing
#   ONLY="vit outgrid_7m" bash bench/real_data.sh # some of the networks
#   MINI_VIT_SUBSET=1000 SUBSET_SCALE=0.4 OMP_NUM_THREADS=1 bash bench/real_data.sh   # on a heavily loaded machine
#
# 1. mini_vit: 2 passes over all 50,000 train images at batch 128, lr 2e-3, 1-pass warmup then
#    cosine, repeated augmentation x1 (the seed's recipe otherwise: AutoAugment, CutMix, random
#    erasing, label smoothing), the whole 10,000-image test split after each epoch.
# 2. then, while the deadline allows (each run is skipped when its estimate would pass it), 2 epochs
#    of each network on a class-balanced subset of the train split (data.subset = the first N
#    images of each class) at batch 64, scored on a class-balanced 1,000-image test subset (the
#    first 100 images of each class, symlinks in a temporary folder): a full pass or the full test
#    split takes too long for these larger networks on this CPU. vit (32 px, patch 4) trains with
#    the Mini-ViT recipe (its own clear-vit recipe is a 256 px ImageNet one); deit_tiny,
#    resnet18 and outgrid_7m with the OutGrid recipe they were compared under; qavit_tiny_32
#    with the QAViT recipe (crop padding 4 as at native 32 px, warmup 10 of 300 epochs scaled to
#    the run). Every schedule spans the run (recipe.epochs=2).
#    OutGrid's own seed protocol holds 10 % of the train split out; here every run sets
#    data.val_size=0 so that each curve is a test curve.
#
# Writes bench/out/real_data/<date>_<time>/: one run folder per network and table.md (command,
# machine, date, load, wall time, test top-1 per epoch) to paste into bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2}

shared=${VITLAB_SHARED_DATA:-$(cd .. && pwd)/shared/data}
data="$shared/cifar10-jpg"
[ -d "$data/train" ] && [ -d "$data/test" ] || { echo "error: no CIFAR-10 JPEG copy at $data (set VITLAB_SHARED_DATA)" >&2; exit 2; }
out="bench/out/real_data/$(date -u +%Y-%m-%d_%H-%M-%S)"
mkdir -p "$out"
deadline=$(date -u -d "${DEADLINE:-10:15}" +%s)
smoke=${REAL_DATA_SMOKE:-0}

# The class-balanced test subset: symlinks to the first 100 images of each class.
test_subset=$(mktemp -d /tmp/vitlab_real_data_test.XXXXXX)
trap 'rm -rf "$test_subset"' EXIT
for class_dir in "$data"/test/*/; do
    class=$(basename "$class_dir")
    mkdir -p "$test_subset/$class"
    ls "$class_dir" | sort | head -n 100 | while read -r f; do ln -s "$class_dir$f" "$test_subset/$class/$f"; done
done

common=(data=cifar10_jpg protocol=seed hardware=cpu hardware.num_workers=1
        "paths.data_dir=$shared" data.val_size=0 recipe.epochs=2 trainer.check_val_every_n_epoch=1
        trainer.num_sanity_val_steps=0 callbacks.progress_bar.kind=tqdm trainer.log_every_n_steps=20)
if [ "$smoke" = 1 ]; then
    common+=(trainer.limit_train_batches=2 trainer.limit_val_batches=2 trainer.limit_test_batches=2)
else
    common+=(data.cache=true)   # decode every JPEG once, not once per epoch
fi
subset=("data.test_dir=$test_subset" recipe.batch_size=64)
# SUBSET_SCALE=f shrinks the per-class train subsets below (and the estimates) by f; EST_FACTOR=k
# multiplies the time estimates (k > 1 on a loaded machine).
scale=${SUBSET_SCALE:-1}
per_class() { python -c "print(max(10, round($1 * $scale)))"; }
est() { python -c "print(round((60 + ($1 - 60) * $scale) * ${EST_FACTOR:-1}))"; }

{
    echo "# Real-data run $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- command: \`bash bench/real_data.sh\` (DEADLINE=${DEADLINE:-10:15}, OMP_NUM_THREADS=$OMP_NUM_THREADS, MINI_VIT_SUBSET=${MINI_VIT_SUBSET:-}, SUBSET_SCALE=${SUBSET_SCALE:-1}, REAL_DATA_SMOKE=$smoke)"
    echo "- machine: $(nproc --all) cores, $(lscpu | sed -n 's/^Model name: *//p'), torch $(python -c 'import torch; print(torch.__version__)'), fp32 (protocol=seed on CPU)"
    echo "- load before: $(uptime | sed 's/.*load average/load average/')"
    echo
} > "$out/header.md"

# run NAME ESTIMATE_S OVERRIDES...: one training run, skipped when its estimate would pass the deadline.
run() {
    local name=$1 estimate=$2; shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
    local now; now=$(date -u +%s)
    if [ "$smoke" != 1 ] && [ $((now + estimate)) -gt "$deadline" ]; then
        echo "skipped $name: ~${estimate} s would pass the deadline $(date -u -d @"$deadline" +%H:%M) UTC"
        echo "$name skipped: ~${estimate} s estimated, $(( (deadline - now) / 60 )) min left before the deadline" >> "$out/skipped.txt"
        return 0
    fi
    echo "== $name ($(date -u +%H:%M:%S) UTC, $(uptime | sed 's/.*load average/load average/'))"
    echo "$(uptime | sed 's/.*load average: //')" > "$out/$name.load_before"
    local started; started=$(date -u +%s)
    python -m vitlab.train "${common[@]}" "$@" task_name="real_data_$name" "hydra.run.dir=$out/$name" \
        || echo "$name failed (exit $?)" >> "$out/skipped.txt"
    echo $(( $(date -u +%s) - started )) > "$out/$name.wall_s"
    echo "$(uptime | sed 's/.*load average: //')" > "$out/$name.load_after"
}

# MINI_VIT_SUBSET=N: the first N train images per class instead of all 5,000 (for a loaded machine).
mini_subset=()
[ -n "${MINI_VIT_SUBSET:-}" ] && mini_subset=("data.subset=$MINI_VIT_SUBSET")
run mini_vit 1700 model=mini_vit recipe.batch_size=128 recipe.repeated_aug=1 recipe.schedule.warmup_epochs=1 \
    recipe.optimizer.lr=2.0e-3 "${mini_subset[@]}"
run vit "$(est 750)" model=vit recipe=mini_vit recipe.repeated_aug=1 recipe.schedule.warmup_epochs=1 data.subset="$(per_class 500)" "${subset[@]}"
run outgrid_7m "$(est 720)" model=outgrid_7m data.subset="$(per_class 200)" "${subset[@]}"
run deit_tiny "$(est 750)" model=deit_tiny data.subset="$(per_class 500)" "${subset[@]}"
run resnet18 "$(est 680)" model=resnet18 data.subset="$(per_class 300)" "${subset[@]}"
run qavit_tiny_32 "$(est 780)" model=qavit_tiny_32 recipe.augment.crop_padding=4 recipe.schedule.warmup_epochs=0.067 \
    data.subset="$(per_class 100)" "${subset[@]}"

python - "$out" <<'PY'
import json, sys
from pathlib import Path

import yaml

out = Path(sys.argv[1])
rows = []
for run in sorted(p for p in out.iterdir() if (p / "metrics.json").is_file()):
    m = json.loads((run / "metrics.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    curve = m.get("test/top1_per_epoch", [])
    per_epoch = " / ".join(f"{100 * p['top1']:.2f}" for p in curve)
    train_images = m["global_step"] * cfg["recipe"]["batch_size"] // max(1, m["epochs"])
    subset = cfg["data"].get("subset")
    test_images = "1,000 (100/class)" if str(cfg["data"].get("test_dir", "test")) != "test" else "10,000"
    wall = int((out / f"{run.name}.wall_s").read_text()) if (out / f"{run.name}.wall_s").is_file() else m["wall_time_s"]
    load = (out / f"{run.name}.load_before").read_text().strip() if (out / f"{run.name}.load_before").is_file() else "?"
    rows.append(
        f"| {m['model']} | {cfg['recipe']['optimizer']['lr']:g} / {cfg['recipe']['batch_size']} | "
        f"{train_images:,}{' (' + str(subset) + '/class)' if subset else ''} | {test_images} | {m['epochs']} | {m['global_step']} | "
        f"{per_epoch} | {100 * m['test/top1_final']:.2f} | {100 * m.get('test/top1_best', float('nan')):.2f} | "
        f"{m['fit_time_s']:.0f} / {wall} | {load} |"
    )
head = (out / "header.md").read_text()
table = [
    "| network | lr / batch | train images per epoch | test images | epochs | steps | test top-1 % per epoch | final % | best % | fit / wall s | load avg before (1, 5, 15 min) |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
    *rows,
]
skipped = (out / "skipped.txt").read_text() if (out / "skipped.txt").is_file() else ""
text = head + "\n".join(table) + "\n" + (f"\nNot run or failed:\n\n{skipped}" if skipped else "")
(out / "table.md").write_text(text)
print(text)
PY
echo "table: $out/table.md"
