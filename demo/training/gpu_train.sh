#!/usr/bin/env bash
# One domain-randomised fine-tuning run of the demo UNETR on a lent GPU host (16 cores, one H100), as it was
# run for issue 9.  It is not part of the node: the node never needs a GPU.
#
#   MINUTES=7 VAL_CROPS=32 OUT=/some/folder bash demo/training/gpu_train.sh     # as run on 2026-11-28
#
# LR (3e-4), RANDOMISED_SHARE (0.5: the share of randomised crops), WORKERS (14), EXTRA (more train.py arguments, e.g. --fp32) and SKIP_WHEELS=1 (use the installed
# packages) let the same script be rehearsed on a CPU first.
# Python packages the host lacks travel as wheels in .whl/ (pip download ... monai nibabel nilearn pydicom
# pydantic ...).  The run starts from the shipped weights, trains on the mixed generator (phantom and
# randomised crops in turn) with 14 crop-drawing processes of one thread each, and leaves in $OUT the log,
# the validation history, and two sets of weights (the last step and the best crop Dice before it), each
# split in two files so that every file stays under 16 MB.
set -euo pipefail
export PYTHONUNBUFFERED=1
MINUTES=${MINUTES:-7.5}
WORKERS=${WORKERS:-14}
VAL_CROPS=${VAL_CROPS:-48}
OUT=${OUT:?set OUT to the folder for the results}
RUN=${RUN:-/tmp/dr_gpu}
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
nproc
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# the anatomy maps are built once here, not by fourteen workers at once
python3 -c "
from demo.training.dr_maps import load_head_maps
from demo.synthetic.anatomy import load_template
import demo.training.train, torch
load_head_maps(); load_template()
print('maps ready; torch', torch.__version__, 'cuda', torch.cuda.is_available())
"
python3 -m demo.training.train --init models/demo_unetr/weights.pt --generator mixed \
    --minutes "$MINUTES" --lr "${LR:-3e-4}" --randomised-share "${RANDOMISED_SHARE:-0.5}" --batch 8 --workers "$WORKERS" --threads 2 --pool 3000 --fresh-every 1 \
    --val-crops "$VAL_CROPS" --validate-minutes 0.75 --seed 41 --keep-snapshots \
    --out "$RUN" --work "$RUN/work" ${EXTRA:-} 2>&1 | tee "$OUT/train.log"
cp "$RUN/training_log.json" "$OUT/training_log_dr_gpu.json"
python3 - "$RUN" "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

import torch

run, out = Path(sys.argv[1]), Path(sys.argv[2])
history = json.loads((run / "training_log.json").read_text())
last = history[-1]["step"]
earlier = [h for h in history[1:-1] if h["step"] != last]
picks = {"last": last}
if earlier:
    picks["best"] = max(earlier, key=lambda h: h["val_dice"])["step"]
for name, step in picks.items():
    state = torch.load(run / "work" / "snapshots" / f"step{step:06d}.pt", map_location="cpu")
    total = sum(t.numel() * t.element_size() for t in state.values())
    parts: dict[str, dict[str, torch.Tensor]] = {"a": {}, "b": {}}
    size = 0
    for key, tensor in state.items():  # by bytes: each half about 14 MB
        parts["a" if size < total / 2 else "b"][key] = tensor
        size += tensor.numel() * tensor.element_size()
    for part, chunk in parts.items():
        torch.save(chunk, out / f"{name}_step{step}_{part}.pt")
    print(name, step)
EOF
