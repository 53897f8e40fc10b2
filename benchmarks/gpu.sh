#!/usr/bin/env bash
# GPU figures in a few minutes, on whatever NVIDIA GPUs PyTorch sees here (none: it says so):
#   1. `fast`: training time to a 99% model, 5 seeds (benchmarks/time_to_99.py)
#   2. the lecture's networks (simple, deep): training images/s in fp32 and bf16, one epoch
#   3. DDP: `fast` in one process on one GPU, then under torchrun over every GPU (NCCL)
# Usage: [PYTHON=.venv/bin/python] bash benchmarks/gpu.sh  (MNIST: $MNIST_DATA_DIR, the cache or a download)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -eq 0 ]; then
    echo "no CUDA GPU visible to PyTorch: nothing to measure"
    exit 0
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
step() { timeout "$1" "${@:2}"; }  # every step bounded: the whole script stays under 5 minutes

# images/s and validation accuracy of a run folder's last epoch
report() {
    "$PY" - "$1" "$2" <<'PYEOF'
import json, sys
r = json.loads(open(sys.argv[2] + "/metrics.jsonl").read().splitlines()[-1])
print(f"{sys.argv[1]:<34} {r['images_per_second']:>10,.0f} images/s  {r['train_seconds']:6.2f} s"
      f"  validation {r['val_accuracy']:.4f}")
PYEOF
}

"$PY" -m mnist_cnn env
echo
echo "== 1. fast: time to 99% on one GPU"
step 90 "$PY" benchmarks/time_to_99.py --device cuda --seeds 5 --process 0

echo
echo "== 2. the lecture's networks on one GPU: one epoch, batch 100"
for model in simple deep; do
    for precision in fp32 bf16; do
        run="$OUT/$model-$precision"
        step 60 "$PY" -m mnist_cnn train --model "$model" --device cuda --precision "$precision" \
            --epochs 1 --out "$run" --no-progress > /dev/null
        report "$model $precision" "$run"
    done
done

echo
echo "== 3. DDP: fast, 1 process on 1 GPU, then $NGPU process(es) on $NGPU GPU(s)"
batch=$(( 256 / NGPU * NGPU ))  # the global batch must split evenly over the GPUs
step 60 "$PY" -m mnist_cnn train --model fast --device cuda --batch-size "$batch" \
    --out "$OUT/ddp-1" --no-progress > /dev/null
report "fast, 1 GPU, batch $batch" "$OUT/ddp-1"
step 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m mnist_cnn train \
    --model fast --device cuda --batch-size "$batch" --out "$OUT/ddp-n" --no-progress > /dev/null
report "fast, DDP over $NGPU GPU(s), batch $batch" "$OUT/ddp-n"
