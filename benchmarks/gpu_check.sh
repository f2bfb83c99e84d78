#!/usr/bin/env bash
# One prepared GPU check: every GPU figure of cxrjepa in one run of under 8 minutes on one H100 / H200,
# written to one results file (RESULTS/gpu.md, and gpu.json beside it).
#
#   bash benchmarks/gpu_check.sh [--wheelhouse DIR] [--results DIR] [--budget SECONDS] [--commit SHA]
#   bash benchmarks/gpu_check.sh --dry-run [--wheelhouse DIR]  # any machine: print and check every step
#   bash benchmarks/gpu_check.sh --make-wheelhouse DIR   # a machine with PyPI: wheels a bare GPU image lacks
#
# Steps, each in its own process with its own time limit (cut to what is left of --budget); a step that fails
# or times out is recorded with the end of its log and the next one runs:
#   setup       install the --wheelhouse wheels (offline) into a folder put on PYTHONPATH
#   pretrain    ViT-B/16 224 px bf16 I-JEPA step: images/s and MFU, eager and compiled; lightly's I-JEPA (the
#               peer) on the same batches ("peer not installed" when lightly is missing)
#   embed       cxrjepa embed vs a bare forward of the same ViT-B/16 on the same images
#   salt        the SALT student step vs the I-JEPA step
#   tests       the gpu-marked tests (pytest -m gpu)
#   objectives  LeJEPA's and JEPA-SIGReg's step, eager, when this checkout registers them
# The machine (GPU, driver, torch / CUDA, commit, missing packages) heads the results file.
#
# PYTHON (default python3) is the interpreter: it must hold torch; cxrjepa runs from this checkout (PYTHONPATH),
# so no install is needed beyond its dependencies. Exit status: 0 every step ok or skipped, 1 a step failed or
# timed out (the results are written either way), 2 usage (or, outside --dry-run, no CUDA device).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
RESULTS=benchmarks/results
WHEELHOUSE=""
MAKE_WHEELHOUSE=""
BUDGET=450
COMMIT=""
DRY=0
# the packages cxrjepa and the checks import that the bare H200 image lacks (its list: 2026-11-17), for
# --make-wheelhouse; pydantic-core is added at the version the downloaded pydantic pins
WHEELS=(lightly "pydicom>=3.0,<4" "zarr>=3.0.8,<4" numcodecs donfig google-crc32c msgspec "pydantic>=2.5"
    annotated-types typing-inspection typing-extensions pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg
    pylibjpeg-rle pyjpegls python-gdcm)

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --dry-run) DRY=1 ;;
    --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a folder}; shift ;;
    --make-wheelhouse) MAKE_WHEELHOUSE=${2:?--make-wheelhouse needs a folder}; shift ;;
    --results) RESULTS=${2:?--results needs a folder}; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    --commit) COMMIT=${2:?--commit needs a commit id}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)." >&2; exit 2 ;;
    esac
    shift
done
case "$BUDGET" in '' | *[!0-9]*) echo "gpu_check.sh: --budget must be a number of seconds." >&2; exit 2 ;; esac
if [ -n "$WHEELHOUSE" ] && ! ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1; then
    echo "gpu_check.sh: --wheelhouse $WHEELHOUSE holds no .whl files." >&2
    exit 2
fi

if [ -n "$MAKE_WHEELHOUSE" ]; then
    # wheels for the GPU image's Python (3.12, x86-64 manylinux), without their dependencies (the image has them)
    plat=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp)
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
        plat+=(--platform "$p")
    done
    mkdir -p "$MAKE_WHEELHOUSE" || exit 1
    "$PY" -m pip download -q "${plat[@]}" -d "$MAKE_WHEELHOUSE" "${WHEELS[@]}" || exit 1
    core=$("$PY" -c "import sys, zipfile, glob, re
meta = [zipfile.ZipFile(w).read(n).decode() for w in glob.glob(sys.argv[1] + '/pydantic-*.whl')
        for n in zipfile.ZipFile(w).namelist() if n.endswith('.dist-info/METADATA')]
print(next(m.group(1) for t in meta for m in [re.search(r'^Requires-Dist: pydantic-core==(\S+)', t, re.M)] if m))" \
        "$MAKE_WHEELHOUSE") || exit 1
    "$PY" -m pip download -q "${plat[@]}" -d "$MAKE_WHEELHOUSE" "pydantic-core==$core" || exit 1
    du -sh "$MAKE_WHEELHOUSE"
    echo "Carry $MAKE_WHEELHOUSE to the GPU machine and run: bash benchmarks/gpu_check.sh --wheelhouse $MAKE_WHEELHOUSE"
    exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cxrjepa-gpu-check.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$SECONDS
FAILED=0

# step NAME KIND LIMIT CMD...: run CMD with a time limit into WORK/NAME.log and record it in WORK/steps.tsv.
# --dry-run: print it and check it instead (syntax, and the benchmark's own --dry-run of these arguments).
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$WORK/steps.tsv"; }
step() {
    local name=$1 kind=$2 limit=$3
    shift 3
    local left=$((BUDGET - (SECONDS - START)))
    echo "== $name (limit ${limit} s): $*"
    if [ "$DRY" = 1 ]; then
        check "$kind" "$@" && record "$name" "$kind" skipped "" 0 "$limit" "dry run: checked" && return 0
        record "$name" "$kind" failed 1 0 "$limit" "dry run: the check failed"
        FAILED=1
        return 0
    fi
    if [ "$left" -lt 30 ]; then
        record "$name" "$kind" skipped "" 0 "$limit" "out of time: ${left} s of the ${BUDGET} s budget left"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS rc=0
    timeout -k 5 "$limit" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    local status=ok
    case $rc in 0) ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
    [ "$status" = ok ] || FAILED=1
    record "$name" "$kind" "$status" "$rc" $((SECONDS - t0)) "$limit" ""
    echo "   $status ($((SECONDS - t0)) s)"
}
# check KIND CMD...: what --dry-run does for one step
check() {
    local kind=$1
    shift
    case $kind in
    pretrain | embed | salt) "$PY" -m py_compile "$2" && "$@" --dry-run ;;
    tests) "$@" --collect-only 2>&1 | tail -n 15 ;; # the same command, collecting only
    env) "$@" ;; # the install goes to the temporary work folder: a dry run checks the wheelhouse too
    *) return 0 ;;
    esac
}

if [ "$DRY" = 1 ]; then
    echo "== syntax: bash -n $0 and python -m py_compile of every script the check runs"
    bash -n "$0" || FAILED=1
    for f in benchmarks/pretrain.py benchmarks/embed.py benchmarks/salt.py benchmarks/gpu_results.py; do
        "$PY" -m py_compile "$f" || FAILED=1
    done
fi

# --- the machine
if [ -n "$WHEELHOUSE" ]; then
    SITE="$WORK/site"
    step setup env 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELHOUSE"/*.whl
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH#"$ROOT"}"
fi
[ -n "$COMMIT" ] || COMMIT=$(git rev-parse HEAD 2>/dev/null || echo "unknown (no git here: pass --commit)")
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)
{
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    if command -v nvidia-smi >/dev/null; then
        printf 'GPUs\t%s\n' "$(nvidia-smi -L 2>&1 | grep -c '^GPU')"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1 |
            awk -F', ' '{printf "GPU\t%s, %s\ndriver\t%s\n", $1, $2, $3}'
    else
        printf 'GPU\tnvidia-smi not found\n'
    fi
    printf 'commit\t%s%s\n' "$COMMIT" "$([ "$dirty" -gt 0 ] && echo " (with uncommitted changes)")"
    printf 'CPUs\t%s\n' "$(nproc)"
    timeout 120 "$PY" - <<'EOF' || printf 'torch\tnot importable by %s\n' "$PY"
import platform
import re
import tomllib
from importlib import metadata

import torch

cuda = torch.version.cuda or "none"
print(f"torch\t{torch.__version__} (CUDA {cuda}, cuDNN {torch.backends.cudnn.version()}, Python {platform.python_version()})")
print(f"CUDA device\t{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none visible to torch'}")
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["bench"]
missing = []
for spec in wanted:
    name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0)
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        missing.append(name)
print(f"not installed\t{', '.join(missing) or 'none'} (of the dependencies, dev and bench extras)")
EOF
} >"$WORK/machine.tsv"
sed 's/\t/: /' "$WORK/machine.tsv"
if [ "$DRY" = 0 ] && ! grep -q "^CUDA device"$'\t'"[^n]" "$WORK/machine.tsv"; then
    echo "gpu_check.sh: torch sees no CUDA device here; run it on a GPU machine, or check it with --dry-run." >&2
    exit 2
fi

# --- the figures (sized for ~6 minutes on an H200, compilation included; see benchmarks/README.md)
step pretrain pretrain 240 "$PY" benchmarks/pretrain.py --sections gpu,lightly --objectives ijepa \
    --gpu-batch 256 --steps 10 --json "$WORK/pretrain.json"
step embed embed 120 "$PY" benchmarks/embed.py --device cuda --arch base --size 256 --n 4096 --batch-size 256 \
    --repeats 2 --rss-n 0 --json "$WORK/embed.json"
step salt salt 150 "$PY" benchmarks/salt.py --sections gpu --steps 10 --json "$WORK/salt.json"
# only the test files that hold gpu-marked tests are collected (the others' imports cost time, not coverage)
mapfile -t gpu_tests < <(grep -rlE 'pytest\.mark\.gpu' tests | sort)
step tests tests 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors \
    --junitxml "$WORK/tests.xml" "${gpu_tests[@]}"
present=$(timeout 120 "$PY" -c "import sys
from cxrjepa.pretrain.objectives import OBJECTIVES
print(','.join(n for n in sys.argv[1:] if n in OBJECTIVES))" lejepa jepa-sigreg 2>/dev/null)
if [ -n "$present" ]; then
    step objectives pretrain 150 "$PY" benchmarks/pretrain.py --sections gpu --objectives "$present" --if-registered \
        --modes eager --gpu-batch 128 --steps 5 --json "$WORK/objectives.json"
else
    echo "== objectives: lejepa and jepa-sigreg are not registered in this checkout; not timed"
    record objectives pretrain skipped "" 0 150 "lejepa, jepa-sigreg: not in this checkout's objective registry"
fi

# --- the results file
if [ "$DRY" = 1 ]; then
    "$PY" benchmarks/gpu_results.py "$WORK" --out "$WORK/results" >/dev/null || FAILED=1
    echo "== the results file this run would write (dry run: to a temporary folder, not $RESULTS)"
    cat "$WORK/results/gpu.md"
    echo "== dry run: $([ "$FAILED" = 0 ] && echo "every check passed" || echo "A CHECK FAILED (see above)")"
else
    "$PY" benchmarks/gpu_results.py "$WORK" --out "$RESULTS" || FAILED=1
    echo "== $((SECONDS - START)) s in all"
fi
exit "$FAILED"
