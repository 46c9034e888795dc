#!/usr/bin/env bash
# GPU smoke checks (run by hand on a CUDA machine; CI has no GPU):
# every precision, torch.compile + channels_last, and torchrun with NCCL, each on a debug config.
# Prints one PASS/FAIL line per check and exits non-zero if any failed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=${OUT:-/tmp}/gpu_smoke
fails=0
check() {
  local name=$1; shift
  if "$@" > "$out/$name.log" 2>&1 && grep -q '^\[val\]' "$out/$name.log"; then
    echo "PASS $name: $(grep '^\[val\]' "$out/$name.log" | tail -1)"
  else
    echo "FAIL $name (log: $out/$name.log)"; tail -5 "$out/$name.log"; fails=$((fails + 1))
  fi
}
mkdir -p "$out"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
for p in fp32 bf16 fp16; do
  check "mnist_cnn_$p" python3 recipes/mnist_cnn.py --config recipes/configs/mnist_cnn_debug.yaml \
    "out_dir=$out/cnn_$p" resume=none overwrite=true precision=$p
done
check resnet_compile_cl_bf16 python3 recipes/resnet_cifar.py --config recipes/configs/resnet_cifar_debug.yaml \
  "out_dir=$out/resnet_compile" resume=none overwrite=true precision=bf16 train.compile=true train.channels_last=true
check torchrun_nccl_1gpu torchrun --nproc_per_node=1 recipes/mnist_mlp.py --config recipes/configs/mnist_mlp_debug.yaml \
  "out_dir=$out/mlp_nccl" resume=none overwrite=true
exit $fails
