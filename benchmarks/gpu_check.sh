#!/usr/bin/env bash
# One prepared GPU session (run from the repository root on a CUDA machine whose image has
# torch, torchvision, lightning and torchmetrics but no network): the digits loop on the GPU in
# bf16, the demo's throughput / MFU table (bf16, eager and compiled), then
# benchmarks/pretrain_value.py. Wheels for what the image lacks (pydantic, timm) are expected in
# .whl/, cifar10-mini as .devdata/cifar10-mini.tgz; results go to $OUT.
# With .devdata/head.tar (`git archive HEAD`), the committed tree runs, not the working one.
set -euo pipefail
if [ -f .devdata/head.tar ]; then
  mkdir -p /tmp/proj && tar xf .devdata/head.tar -C /tmp/proj
  cp -r .whl .devdata /tmp/proj/ && cd /tmp/proj
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p ../shared/datasets && tar xzf .devdata/cifar10-mini.tgz -C ../shared/datasets
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, lightning, timm, torchvision, pydantic; print('torch', torch.__version__,
  'lightning', lightning.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
start=$(date +%s)
python3 -m uniframework run benchmarks/gpu_smoke.yaml --out /tmp/gpu-smoke 2>&1 \
  | grep -v -i warn | tail -n 40 | tee "$OUT/smoke.log"
echo "smoke: $(( $(date +%s) - start )) s"
# the demo's MFU table in bf16 against the GPU's bf16 matmul peak (issue 19), eager and
# with trainer.compile (each under 5 minutes on a GPU; `timeout` keeps the session's budget)
for compile in false true; do
  timeout 300 python3 benchmarks/throughput.py --only demo --peak-device cuda --peak-dtype bf16 \
    trainer.accelerator=gpu trainer.precision=bf16-mixed trainer.compile=$compile 2>&1 \
    | grep -v -i warn | tail -n 30 | tee "$OUT/throughput-compile-$compile.log" || true
done
python3 benchmarks/pretrain_value.py --accelerator gpu --precision bf16-mixed \
  --pretrain-epochs "${EPOCHS:-mae=100,simmim=100,ibot=50}" --pretrain-minutes "${MINUTES:-1.25}" \
  --finetune-epochs "${FT_EPOCHS:-60}" --workers 8 2>&1 | grep -v -i warn | tee "$OUT/value.log"
cp benchmarks/out/pretrain_value/results.json "$OUT/value.json"
