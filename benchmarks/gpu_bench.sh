#!/usr/bin/env bash
# ONE device call for issue "Training throughput": megadepth bench and the plain-PyTorch reference, side
# by side, for the GPT shapes of configs/bench (gpt-124m, gpt-350m, gpt-1.3b) and one Llama shape (llama-125m:
# RMSNorm, SwiGLU, rotary; plain_gpt.py runs its plain Llama block for it); a table last, JSON under $OUT.
# Budget: about 9.5 minutes with the Muon row at gpt-124m (MUON_SHAPE="" skips it; llama-350m and llama-1.3b have bench configs too: SHAPES="llama-350m" ...).
#
# Prepare once on the development machine (from the repository root):
#   pip download --no-deps -d .whl deepspeed pydantic pydantic-core  # wheels into .whl/ (git-ignored), for a
#                                                    # GPU machine that cannot reach a package index
# Then the device call (carry [".whl"]):
#   bash benchmarks/gpu_bench.sh
# On a CPU machine, for a dry run of every part at a tiny shape (SHAPES="gpt-124m llama-125m" for the Llama row too):
#   OUT=/tmp/bench SHAPES="gpt-124m" SP_SHAPE=gpt-124m BENCH_SET="--set model.depth=2 --set model.width=64 \
#     --set model.heads=4 --set model.base_depth=1 --set model.base_width=32 --set model.base_heads=4 \
#     --set model.seq_len=64 --set train.micro_batch=2" STEPS=3 WARMUP=1 COMPILE=false bash benchmarks/gpu_bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/megadepth-bench}
SHAPES=${SHAPES:-"gpt-124m llama-125m gpt-350m gpt-1.3b"}   # llama-125m second: measured before the large shapes
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-8}
COMPILE=${COMPILE:-true}
SP_SHAPE=${SP_SHAPE-gpt-350m}   # the shape at which Depth-muP's multipliers are timed against SP ("" skips it)
MUON_SHAPE=${MUON_SHAPE-gpt-124m}   # the shape at which Muon's step is timed against AdamW's ("" skips it)
BENCH_SET=${BENCH_SET:-}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export TORCH_CUDA_ARCH_LIST=9.0   # the image's 9.0a breaks DeepSpeed's JIT builds of its fused ops
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee "$OUT/env.txt"
plain_compile=""
[ "$COMPILE" = "true" ] || plain_compile="--no-compile"
# Smoke first (tiny shape, eager, ~20 s): a broken CUDA/DeepSpeed set-up fails here, leaving the device
# time for a rerun instead of spending it on three shapes that would all fail the same way.
echo "== [${SECONDS}s] smoke: megadepth bench at the tiny shape"
# shellcheck disable=SC2086
if ! timeout 150 python3 -m megadepth bench configs/bench/tiny.yaml --steps 3 --warmup 1 \
    --json "$OUT/smoke.json" > "$OUT/smoke.log" 2>&1; then
  echo "smoke run failed; stopping before the shapes:"; tail -30 "$OUT/smoke.log"; exit 1
fi
grep -E '"(tokens_per_s|precision|device)"' "$OUT/smoke.json"
for shape in $SHAPES; do
  cfg=configs/bench/$shape.yaml
  echo "== [${SECONDS}s] $shape: megadepth bench (compile=$COMPILE)"
  # shellcheck disable=SC2086
  timeout 240 python3 -m megadepth bench "$cfg" $BENCH_SET --set train.compile=$COMPILE --steps "$STEPS" \
    --warmup "$WARMUP" --json "$OUT/megadepth-$shape.json" > "$OUT/megadepth-$shape.log" 2>&1 \
    || { echo "megadepth bench $shape failed:"; tail -20 "$OUT/megadepth-$shape.log"; }
  echo "== [${SECONDS}s] $shape: plain PyTorch reference"
  # shellcheck disable=SC2086
  timeout 180 python3 benchmarks/plain_gpt.py "$cfg" $BENCH_SET --steps "$STEPS" --warmup "$WARMUP" $plain_compile \
    --json "$OUT/plain-$shape.json" > "$OUT/plain-$shape.log" 2>&1 \
    || { echo "plain $shape failed:"; tail -20 "$OUT/plain-$shape.log"; }
done
if [ -n "$SP_SHAPE" ]; then
  echo "== [${SECONDS}s] $SP_SHAPE: megadepth bench with SP (the multipliers' cost)"
  # shellcheck disable=SC2086
  timeout 240 python3 -m megadepth bench "configs/bench/$SP_SHAPE.yaml" $BENCH_SET --set parametrization.name=sp \
    --set train.compile=$COMPILE --steps "$STEPS" --warmup "$WARMUP" --json "$OUT/megadepth-sp-$SP_SHAPE.json" \
    > "$OUT/megadepth-sp-$SP_SHAPE.log" 2>&1 || { echo "megadepth bench sp $SP_SHAPE failed:"; tail -20 "$OUT/megadepth-sp-$SP_SHAPE.log"; }
fi
if [ -n "$MUON_SHAPE" ]; then
  echo "== [${SECONDS}s] $MUON_SHAPE: megadepth bench with Muon (its overhead against AdamW; Newton-Schulz in bf16)"
  # shellcheck disable=SC2086
  timeout 240 python3 -m megadepth bench "configs/bench/$MUON_SHAPE.yaml" $BENCH_SET --set optimizer.name=muon \
    --set train.compile=$COMPILE --steps "$STEPS" --warmup "$WARMUP" --json "$OUT/megadepth-muon-$MUON_SHAPE.json" \
    > "$OUT/megadepth-muon-$MUON_SHAPE.log" 2>&1 || { echo "megadepth bench muon $MUON_SHAPE failed:"; tail -20 "$OUT/megadepth-muon-$MUON_SHAPE.log"; }
fi
echo "== [${SECONDS}s] done"
# shellcheck disable=SC2086
python3 benchmarks/bench_table.py "$OUT" $SHAPES | tee "$OUT/table.md"
