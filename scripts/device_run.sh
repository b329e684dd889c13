#!/usr/bin/env bash
# The GPU check, run on the lent GPU machine from the repository root (docs/gpu.md):
#   bash scripts/device_run.sh [quick|full|tests]
# It needs .device/wheels and .device/data carried (scripts/device_bundle.py builds them here).
# 1. the machine (GPU, torch), 2. the CUDA tests (tests/test_cuda.py: solvers on CUDA, training
# under bf16 and fp16 autocast), 3. unless "tests": Table III with complete per-attribute CNNs
# (`tail: all`, trainable trunk), fold 0 with the reduced schedule ("quick") or all 5 folds
# ("full"), stopped after LIMIT seconds. Everything it reports lands in $OUT (what the device
# tool brings back): env.txt, cuda_tests.log, reproduce.log, results.json, report.md, folds.json
# (the finished folds) and train.log (the last fold's).
set -uo pipefail
MODE=${1:-quick}
OUT=${OUT:-/tmp/apcnn-device-out}
LIMIT=${LIMIT:-420}
REPRO=/tmp/apcnn-repro
case "$MODE" in quick | full | tests) ;; *) echo "usage: $0 [quick|full|tests]" >&2; exit 2 ;; esac
if ! ls .device/wheels/*.whl >/dev/null 2>&1 || [ ! -d .device/data/ClothingAttributeDataset ]; then
  echo "no .device/wheels or .device/data here: run scripts/device_bundle.py and carry both" >&2
  exit 2
fi
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .device/wheels/*.whl || exit 1
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 APCNN_CACHE=/tmp/apcnn-cache

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__)"
} 2>&1 | tee "$OUT/env.txt"

# -p no:cacheprovider: nothing written into the tree; -o addopts=: no plugin-only options
python3 -m pytest -q -p no:cacheprovider -o addopts= -rs tests/test_cuda.py 2>&1 |
  tee "$OUT/cuda_tests.log" | tail -5
[ "$MODE" = tests ] && exit 0

quick=()
[ "$MODE" = quick ] && quick=(--quick)
start=$(date +%s)
timeout "$LIMIT" python3 -m apcnn reproduce clothing --root .device/data/ClothingAttributeDataset \
  --out "$REPRO" "${quick[@]}" --set model.tail=all --set model.freeze_trunk=false \
  --set train.adapt_blocks=0 --set model.flip_average=false > "$OUT/reproduce.log" 2>&1
status=$?
echo "reproduce: exit $status after $(($(date +%s) - start)) s (limit $LIMIT s)" | tee -a "$OUT/reproduce.log"
tail -25 "$OUT/reproduce.log"
for f in results.json report.md; do [ -f "$REPRO/$f" ] && cp "$REPRO/$f" "$OUT/"; done
# at most 8 files come back: the finished folds' fold.json together, the last fold's train.log
python3 - "$REPRO" "$OUT/folds.json" <<'PY'
import json, pathlib, sys
folds = {d.name: json.loads((d / "fold.json").read_text())
         for d in sorted(pathlib.Path(sys.argv[1]).glob("fold*")) if (d / "fold.json").is_file()}
pathlib.Path(sys.argv[2]).write_text(json.dumps(folds, indent=1))
print("finished folds:", ", ".join(folds) or "none")
PY
last=$(ls -d "$REPRO"/fold* 2>/dev/null | tail -1)
[ -n "$last" ] && [ -f "$last/train.log" ] && cp "$last/train.log" "$OUT/train.log"
exit 0
