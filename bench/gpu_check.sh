#!/usr/bin/env bash
# GPU check, under 5 minutes on one GPU: the engine against a bare PyTorch loop on the same
# GPU in fp32, bf16 and fp16 (throughput and peak memory), then two processes where two GPUs
# exist; one line per figure (bench/bench_train.py measures, this script sets up and loops).
#
#   bash bench/gpu_check.sh            (from anywhere; it moves to the repository root)
#
# Assumes python with torch (a CUDA build) and torchvision; installs the few training packages
# it lacks with pip (from $VISIONBOARD_WHEELS, a folder of wheels, where there is no network).
# Needs no `pip install -e .`: the repository is put on PYTHONPATH. Data is generated, weights
# are not used (pretrained = false). Exit: 0 measured, 1 a run failed, 2 no usable python or
# packages, 3 no GPU present (nothing measured).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export VISIONBOARD_SAMPLES=0 PYTHONUNBUFFERED=1
IMAGES=${GPU_CHECK_IMAGES:-1600}
EPOCHS=${GPU_CHECK_EPOCHS:-2}
BATCH=${GPU_CHECK_BATCH:-64}
WORKERS=${GPU_CHECK_WORKERS:-4}
RUN_LIMIT=${GPU_CHECK_RUN_LIMIT:-150}  # seconds per run: a hung run fails, the check goes on
say() { echo "gpu_check: $*"; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    say "no torch for $PYTHON (set PYTHON=... to a python with a CUDA build of torch)"
    exit 2
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    say "no GPU present (torch $("$PYTHON" -c 'import torch; print(torch.__version__)'):" \
        "torch.cuda.is_available() is False); nothing measured"
    exit 3
fi

# Only what training needs (the dashboard's and export's packages are not used here); torch
# and torchvision are never installed by this script: they must match the machine's CUDA.
PACKAGES=(accelerate timm sqlite-utils scikit-learn pillow numpy safetensors pyyaml tqdm)
missing() {
    "$PYTHON" - "${PACKAGES[@]}" <<'PY'
import importlib.util, sys
modules = {"sqlite-utils": "sqlite_utils", "scikit-learn": "sklearn", "pillow": "PIL",
           "pyyaml": "yaml"}
print(" ".join(p for p in sys.argv[1:] if importlib.util.find_spec(modules.get(p, p)) is None))
PY
}
if ! "$PYTHON" -c "import torchvision" 2>/dev/null; then
    say "torchvision is missing: install the build that matches torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
    exit 2
fi
need=$(missing)
if [[ -n "$need" ]]; then
    say "installing $need"
    source_args=()
    [[ -n "${VISIONBOARD_WHEELS:-}" ]] && source_args=(--no-index --find-links "$VISIONBOARD_WHEELS")
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install --quiet "${source_args[@]}" $need >/dev/null 2>&1 || true
    need=$(missing)
    if [[ -n "$need" ]]; then
        say "missing packages: $need (no network? put their wheels in a folder and set VISIONBOARD_WHEELS)"
        exit 2
    fi
fi
if ! err=$("$PYTHON" -c "import engine.cli, engine.train, engine.worker" 2>&1); then
    say "the engine does not import: $(echo "$err" | tail -1)"
    exit 2
fi

started=$SECONDS
"$PYTHON" - <<'PY'
import subprocess, torch
names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
memory = [torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(len(names))]
print(f"gpu_check: {len(names)} GPU(s): " + ", ".join(f"{n} ({m:.0f} GiB)" for n, m in zip(names, memory)))
try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.split()[0]
except (OSError, IndexError):
    driver = "unknown (no nvidia-smi: memory figures are n/a)"
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, driver {driver}")
PY
gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
bf16=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_bf16_supported()))")
say "efficientnet_b0, 64 px, $IMAGES generated images, batch $BATCH per GPU, $EPOCHS epochs" \
    "(last one measured), $WORKERS loader workers; memory: peak above idle, nvidia-smi"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -c "
import sys; sys.argv = ['bench_train']
sys.path.insert(0, 'bench')
from pathlib import Path
from bench_train import write_folder
write_folder(Path('$tmp/shapes'), $IMAGES)
" || { say "could not write the generated images"; exit 2; }

failed=0
bench() {  # one bench_train.py run; its lines are printed and kept for the scaling figure
    local out
    if out=$(timeout "$RUN_LIMIT" "$PYTHON" bench/bench_train.py --device cuda --data "$tmp/shapes" \
        --images "$IMAGES" --epochs "$EPOCHS" --batch "$BATCH" --workers "$WORKERS" "$@" 2>&1); then
        echo "$out" | tee -a "$tmp/figures"
    else
        say "FAILED: bench_train.py $* (exit $?):"
        echo "$out" | tail -20 | sed 's/^/    /'
        failed=1
    fi
}
bench --precision no
if [[ "$bf16" == 1 ]]; then bench --precision bf16; else say "bf16: not supported by this GPU"; fi
bench --precision fp16
if (( gpus >= 2 )); then
    bench --precision no --processes 2
    "$PYTHON" - "$tmp/figures" <<'PY'
import sys
rates = {}
for line in open(sys.argv[1]):  # "cuda fp32 1gpu   engine throughput   1234.56 img/s"
    words = line.split()
    if "engine throughput" in line and words[1] == "fp32":
        rates[words[2]] = float(words[-2])
if "1gpu" in rates and "2gpu" in rates:
    ratio = rates["2gpu"] / rates["1gpu"]
    print(f"{'cuda fp32':<16} {'engine 2 GPUs / 1 GPU (ideal 2.00)':<36} {ratio:.2f}")
PY
else
    say "two processes: skipped ($gpus GPU on this machine)"
fi
say "done in $((SECONDS - started)) s$( ((failed)) && echo ', with failures above')"
exit "$failed"
