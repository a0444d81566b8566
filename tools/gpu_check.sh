#!/usr/bin/env bash
# Every GPU figure in the README in one go, on a machine with one CUDA GPU:
#   bash tools/gpu_check.sh path/to/cifar10-jpg.tar.xz OUTDIR
# The stages run most needed first, so that a run cut short still brings back what matters most:
# 1. the CUDA tests (graph against eager, resume, --amp, --deterministic); 2. the loop and process wall
# time of `--recipe tuned` alone (also with --amp, with --deterministic, and with its settings before batch
# 512), and its accuracy over 3 seeds at 10 epochs (the open goals of the tuned recipe); 3. bench/compare.py (tutorial loop vs train.py, 10 epochs, default recipe); 4. the
# process wall time of plain `python train.py`; 5. where the time goes: bench/step_time.py at batch 512,
# import times and a cProfile of a whole run; 6. `--recipe tuned` and its SGD
# row, 3 seeds each at 50 epochs. With FULL_SEARCH=1, 7: the whole recipe search of docs/experiments.md
# (10 epochs, each variant with seed 0, the best 6 with seeds 1 and 2): it needs a BUDGET of about an hour.
# The whole script keeps inside BUDGET seconds (default 540, under a device command's 10 minutes): each
# stage's timeout is cut to what is left, and a stage with under a minute left is skipped, said in the log.
set -u
archive=$1
out=$2
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
data=${DATA:-/tmp/cifar}          # the JPEG folders are unpacked here
pydata=${PYDATA:-./data}          # and written as cifar-10-batches-py here, where `python train.py` looks
wall=$(mktemp -d)                 # the timed runs write their logs and checkpoints here
trap 'rm -rf "$wall"' EXIT
deadline=$(( $(date +%s) + ${BUDGET:-540} ))
stamp() { echo "=== $(date +%T) $*" | tee -a "$log"; }
# limit SECONDS: the smaller of SECONDS and the time left; fails (and logs a skip) under a minute left
limit() {
  local left=$(( deadline - $(date +%s) ))
  if [ $left -lt 60 ]; then echo "=== skipped: $(( left > 0 ? left : 0 )) s of the budget left" | tee -a "$log" >&2; return 1; fi
  echo $(( $1 < left ? $1 : left ))
}

stamp setup
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | tee -a "$log"
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), '| cpus', __import__('os').cpu_count())" 2>&1 | tee -a "$log"
mkdir -p $data && tar -xJf "$archive" -C $data
$py tools/cifar_copy.py $data $pydata 2>&1 | tee -a "$log"  # also caches $data's decoded tensors
export $($py tools/cifar_copy.py --env $pydata)  # torchvision then accepts the copy's md5s too

# wall_time RUN [FLAGS...]: one quiet `python train.py` run; prints its process wall, train and loop seconds
wall_time() {
  local run=$1; shift
  local secs; secs=$(limit 120) || return
  local start; start=$(date +%s.%N)
  timeout $secs $py train.py --quiet --data-dir $pydata --logdir $wall --run-name $run "$@" 2>&1 | tee -a "$log"
  local end; end=$(date +%s.%N)
  $py - "$run" "$start" "$end" $wall/$run/metrics.jsonl <<'PY' 2>&1 | tee -a "$log"
import json, sys
run, start, end, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
records = [json.loads(line) for line in open(path)]
print(f"{run}: process wall {end - start:.2f} s, train {sum(r['train_seconds'] for r in records):.2f} s, "
      f"loop {sum(r['epoch_seconds'] for r in records):.2f} s, final accuracy {records[-1]['test_accuracy']:.2%}")
PY
}

stamp cuda tests
if secs=$(limit 180) && ! timeout $secs $py -m pytest -q -p no:cacheprovider tests/test_cuda.py >"$out/cuda_tests.txt" 2>&1; then
  extra="--no-cuda-graph"  # keep measuring, eagerly, if the graph path failed its tests
fi
tail -25 "$out/cuda_tests.txt" 2>/dev/null | tee -a "$log"

t="--recipe tuned ${extra:-}"   # Muon (decay 0.2) + SGD (lr 0.08 cosine, wd 2e-3, Nesterov 0.9), batch 512, translate 2, normalize, smoothing 0.1
b128="--batch-size 128 --lr 0.04"  # the tuned recipe's before batch 512, and still those of its SGD rows (README)
stamp tuned recipe alone, with --amp, with --deterministic, its batch-128 settings alone, then 3 seeds at 10 epochs
wall_time tuned $t
wall_time tuned-amp $t --amp  # on the H200, under the graph, time followed images more than steps (README)
wall_time tuned-deterministic $t --deterministic  # what --deterministic costs (docs/speed.md)
wall_time tuned-b128 $t $b128 --muon-decay 0.1
secs=$(limit 240) && timeout $secs $py experiments/recipe_search.py --data-dir $data --epochs 10 --seeds 0 1 2 --jobs 3 \
  --out "$out/tuned10.jsonl" --variant "tuned=$t" 2>&1 | tee -a "$log"

stamp compare
secs=$(limit 240) && timeout $secs $py bench/compare.py --data-dir $pydata --epochs 10 --tutorial-epochs 2 \
  --devices "${DEVICE:-cuda}" --variants fp32 amp eager 2>&1 | tee -a "$log"

stamp wall time of plain runs
wall_time plain1
wall_time plain2

stamp where the time goes
# the network's step alone at the tuned batch size, per memory format and precision: which is fastest here
secs=$(limit 120) && timeout $secs $py bench/step_time.py --device "${DEVICE:-cuda}" --batch-size 512 2>&1 | tee -a "$log"
secs=$(limit 60) && timeout $secs $py -X importtime -c "import train" 2>"$out/importtime.txt"
secs=$(limit 120) && timeout $secs $py -m cProfile -o "$out/train.prof" train.py --quiet --data-dir $pydata \
  --logdir $wall --run-name profiled 2>&1 | tee -a "$log"

# the README's 50-epoch commands: on the CPU the recipe (Muon with its decay) ended above SGD
stamp tuned recipe and its SGD row, 3 seeds each, 50 epochs
secs=$(limit 600) && timeout $secs $py experiments/recipe_search.py --data-dir $data --epochs 50 --seeds 0 1 2 --jobs 6 \
  --out "$out/tuned50.jsonl" --variant "tuned-sgd=$t --optimizer sgd $b128" --variant "tuned=$t" \
  2>&1 | tee -a "$log"

if [ "${FULL_SEARCH:-0}" != 1 ]; then stamp done; exit 0; fi
stamp recipe search, 10 epochs
# the SGD search, with weight decay 1e-3; the CPU then chose 2e-3 (docs/experiments.md)
t="$t --optimizer sgd $b128 --translate 1 --weight-decay 1e-3"
old="$t --batch-size 256 --lr 0.05 --weight-decay 5e-4 --schedule onecycle --translate 2"  # the earlier tuned recipe
b64="$t --batch-size 64 --lr 0.02 --weight-decay 5e-4 --translate 2"
secs=$(limit 900) && timeout $secs $py experiments/recipe_search.py --data-dir $data --epochs 10 --seeds 0 1 2 --screen 6 --jobs 4 \
  --out "$out/search10.jsonl" \
  --variant "tuned=$t" \
  --variant "tuned-translate2=$t --translate 2" \
  --variant "b64-lr0.02=$t --batch-size 64 --lr 0.02" \
  --variant "b64-lr0.02-wd5e-4=$t --batch-size 64 --lr 0.02 --weight-decay 5e-4" \
  --variant "b128-lr0.03-wd5e-4-t2=$t --lr 0.03 --weight-decay 5e-4 --translate 2" \
  --variant "b128-onecycle-wd5e-4-t2=$t --weight-decay 5e-4 --schedule onecycle --translate 2" \
  --variant "old-tuned=$old" \
  --variant "old-tuned-lr0.08=$old --lr 0.08" \
  --variant "b256-cosine-warmup=$t --batch-size 256 --lr 0.05 --weight-decay 5e-4 --warmup 0.05 --translate 2" \
  --variant "b64-t2=$b64" \
  --variant "b64-t2-lr0.01=$b64 --lr 0.01" \
  --variant "b64-t2-lr0.03=$b64 --lr 0.03" \
  --variant "b64-t2-onecycle=$b64 --schedule onecycle" \
  --variant "b64-t2-onecycle-lr0.04=$b64 --schedule onecycle --lr 0.04" \
  --variant "b64-t2-wd1e-3=$b64 --weight-decay 1e-3" \
  --variant "b64-t2-ls0=$b64 --label-smoothing 0" \
  --variant "b64-t2-ls0.2=$b64 --label-smoothing 0.2" \
  --variant "b64-t3=$b64 --translate 3" \
  --variant "b64-flip-only=$b64 --translate 0" \
  --variant "b64-t2-momentum0.95=$b64 --momentum 0.95" \
  --variant "b64-t2-warmup=$b64 --warmup 0.05" \
  --variant "b32-t2-lr0.01=$b64 --batch-size 32 --lr 0.01" \
  2>&1 | tee -a "$log"

stamp recipe search, 50 epochs
secs=$(limit 900) && timeout $secs $py experiments/recipe_search.py --data-dir $data --epochs 50 --seeds 0 1 2 --jobs 6 --out "$out/search50.jsonl" \
  --variant "tuned-translate2=$t --translate 2" --variant "b64-t2=$b64" 2>&1 | tee -a "$log"
stamp done
