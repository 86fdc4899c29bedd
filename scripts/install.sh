#!/usr/bin/env bash
# Install eft-local for this machine into .venv (run from anywhere; works in a fresh clone):
#   1. picks the llama.cpp build: CUDA (an NVIDIA GPU and nvcc), Metal (Apple silicon) or CPU
#      with the instruction sets this CPU has (never -march=native: such a build dies with
#      "Illegal instruction" on other CPUs, and on some of this one's, e.g. AMX); RPC is always on;
#   2. creates .venv (if absent) and installs llama-cpp-python built that way: a prebuilt wheel
#      from ../shared/wheels when one matches, else one from the wheelhouse
#      (~/.cache/eft-local/wheelhouse, keyed by version + flags, because pip's own wheel cache
#      ignores CMAKE_ARGS), else a fresh build (minutes: it says the expected time on idle cores,
#      then its progress once a minute with the time left at the measured pace,
#      EFT_PROGRESS_SECONDS to change) that is kept there;
#   3. installs eft-local itself (editable).
# Then:  .venv/bin/eft-local
#
# scripts/install.sh --dry-run   only says which build it would install, and changes nothing.
#
# Overrides: EFT_BACKEND=cpu|cuda|metal, CMAKE_ARGS="..." (used as given, plus -DGGML_RPC=ON),
# PYTHON=python3.12, EFT_WHEELHOUSE=DIR, EFT_SHARED_WHEELS=DIR, EFT_LLAMA_VERSION=0.3.36.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=""
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: scripts/install.sh [--dry-run]" >&2; exit 2 ;;
esac

LLAMA_VERSION="${EFT_LLAMA_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
SHARED_WHEELS="${EFT_SHARED_WHEELS:-../shared/wheels}"
WHEELHOUSE_ROOT="${EFT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/eft-local/wheelhouse}"
RPC="-DGGML_RPC=ON"
# The portable CPU build (runs on every x86-64 CPU with AVX2, Intel and AMD alike).
X86_AVX2="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

# -- what this machine has --------------------------------------------------------------------
cpu_features() {  # lower-case CPU flags, space separated
  local cpuinfo="${EFT_CPUINFO:-/proc/cpuinfo}"
  if [ -r "$cpuinfo" ]; then
    grep -m1 -E '^(flags|Features)' "$cpuinfo" | cut -d: -f2 | tr 'A-Z' 'a-z'
  elif command -v sysctl >/dev/null 2>&1; then
    sysctl -n machdep.cpu.features machdep.cpu.leaf7_features 2>/dev/null | tr 'A-Z' 'a-z' | tr '.' '_' || true
  fi
}
has() { case " $FEATURES " in *" $1 "*) return 0 ;; esac; return 1; }

find_nvcc() {
  command -v nvcc 2>/dev/null && return 0
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin /opt/cuda/bin; do
    [ -x "$d/nvcc" ] && { echo "$d/nvcc"; return 0; }
  done
  return 1
}
nvidia_gpu() {  # an NVIDIA GPU is present and its driver answers
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'
}

OS=$(uname -s)
ARCH=$(uname -m)
FEATURES=" $(cpu_features) "
BACKEND="${EFT_BACKEND:-}"
if [ -z "$BACKEND" ]; then
  if nvidia_gpu && find_nvcc >/dev/null; then
    BACKEND=cuda
  elif [ "$OS" = Darwin ] && [ "$ARCH" = arm64 ]; then
    BACKEND=metal
  else
    BACKEND=cpu
    if nvidia_gpu; then
      say "an NVIDIA GPU is present but the CUDA toolkit (nvcc) is not: building for the CPU."
      say "  install the CUDA toolkit and rerun for GPU offload"
    fi
  fi
fi

if [ -n "${CMAKE_ARGS:-}" ]; then
  FLAGS="$CMAKE_ARGS"
  case " $FLAGS " in *GGML_RPC*) ;; *) FLAGS="$FLAGS $RPC" ;; esac
else
  case "$BACKEND" in
    cuda)
      NVCC=$(find_nvcc) || die "EFT_BACKEND=cuda but no nvcc found (install the CUDA toolkit)"
      export PATH="$(dirname "$NVCC"):$PATH" CUDACXX="$NVCC"
      FLAGS="-DGGML_CUDA=on $RPC"
      # Build for this GPU only (all architectures take far longer).
      CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .' || true)
      [ -n "$CAP" ] && FLAGS="$FLAGS -DCMAKE_CUDA_ARCHITECTURES=$CAP"
      ;;
    metal) FLAGS="-DGGML_METAL=on $RPC" ;;
    cpu)
      case "$ARCH" in
        x86_64|amd64)
          if has avx2 && has fma && has f16c; then
            FLAGS="$X86_AVX2"
            if has avx512f; then FLAGS="$FLAGS -DGGML_AVX512=ON"; fi
          elif has avx; then
            FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF"
          else
            FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF"
          fi
          FLAGS="$FLAGS $RPC"
          ;;
        *) FLAGS="$RPC" ;;  # ARM & co: llama.cpp's defaults for this CPU
      esac
      ;;
    *) die "EFT_BACKEND must be cpu, cuda or metal, got '$BACKEND'" ;;
  esac
fi

# A prebuilt wheel in ../shared/wheels (this project's machines): the portable AVX2 + RPC build
# runs on every x86-64 CPU with AVX2, so it is preferred over compiling an AVX-512 variant.
SHARED_WHEEL=""
if [ "$BACKEND" = cpu ] && [ -z "${CMAKE_ARGS:-}" ] && case "$FLAGS" in "$X86_AVX2"*) true ;; *) false ;; esac; then
  SHARED_WHEEL=$(ls "$SHARED_WHEELS"/avx2-rpc/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  [ -n "$SHARED_WHEEL" ] && FLAGS="$X86_AVX2 $RPC"
fi

say "backend $BACKEND ($OS $ARCH); llama-cpp-python $LLAMA_VERSION with CMAKE_ARGS=\"$FLAGS\""
[ -n "$SHARED_WHEEL" ] && say "prebuilt wheel available: $SHARED_WHEEL"
[ -n "$DRY_RUN" ] && exit 0

# -- compiling llama.cpp, with progress --------------------------------------------------------
expected_time() {  # measured on idle cores: ~7-8 min for the CPU build on 2; CUDA kernels take far longer
  case "$BACKEND" in
    cuda) echo "expect 15-40 minutes on idle cores" ;;
    *) echo "expect about $(( 14 / JOBS + 1 )) minutes on idle cores" ;;
  esac
}

busy_note() {  # a machine busy with other work builds slower: say so, with its load
  local load
  load=$(cut -d' ' -f1 "${EFT_LOADAVG:-/proc/loadavg}" 2>/dev/null || true)
  [ -n "$load" ] || return 0
  if [ "$(awk -v l="$load" -v j="$JOBS" 'BEGIN { print (l >= j / 2) ? 1 : 0 }')" = 1 ]; then
    say "  this machine is busy (load $load on $JOBS cores): the build will take longer; the progress lines re-estimate"
  fi
}

build_progress() {  # LOG ELAPSED_S: "45% (step 12/180), 3 min 10 s so far, about 4 min left at this pace"
  local step pct="" text
  step=$(grep -oE '^ *\[ *[0-9]+(/[0-9]+|%)\]' "$1" 2>/dev/null | tail -n1 | tr -d ' []' || true)
  case "$step" in  # ninja's "[12/180]" or make's "[ 45%]"
    */*) pct=$(( 100 * ${step%/*} / ${step#*/} )); text="$pct% (step $step)" ;;
    *%) pct=${step%\%}; text="$step" ;;
    *) text="configuring" ;;
  esac
  text="$text, $(( $2 / 60 )) min $(( $2 % 60 )) s so far"
  # the estimate from the pace measured so far (this machine, this load), once there is some
  if [ -n "$pct" ] && [ "$pct" -ge 5 ] && [ "$pct" -lt 100 ]; then
    text="$text, about $(( ($2 * (100 - pct) / pct + 59) / 60 )) min left at this pace"
  fi
  echo "$text"
}

build_with_progress() {  # LOG COMMAND...: run it with its output in LOG; a progress line every minute
  local log="$1" every="${EFT_PROGRESS_SECONDS:-60}" start=$SECONDS next pid rc=0
  shift
  "$@" >"$log" 2>&1 &
  pid=$!
  next=$(( start + every ))
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ "$SECONDS" -ge "$next" ] && kill -0 "$pid" 2>/dev/null; then
      say "  still compiling: $(build_progress "$log" $(( SECONDS - start )))"
      next=$(( next + every ))
    fi
  done
  wait "$pid" || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 25 "$log" | sed 's/^/  | /' >&2
    return "$rc"
  fi
  say "  compiled in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
}

# -- the virtual environment ------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (Python >= 3.10 is needed; set PYTHON=...)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$("$PYTHON" -V 2>&1) is too old: eft-local needs Python >= 3.10 (set PYTHON=python3.11, say)"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv .venv || die "could not create .venv (on Debian/Ubuntu: apt install python3-venv)"
fi
PY=.venv/bin/python
"$PY" -m pip install -q --upgrade pip

# -- llama-cpp-python -------------------------------------------------------------------------
KEY=$(printf '%s %s' "$LLAMA_VERSION" "$FLAGS" | { sha256sum 2>/dev/null || shasum -a 256; } | cut -c1-12)
WHEELHOUSE="$WHEELHOUSE_ROOT/llama-cpp-python-$LLAMA_VERSION-$KEY"
if [ -n "$SHARED_WHEEL" ]; then
  WHEEL="$SHARED_WHEEL"
  say "prebuilt wheel $WHEEL"
else
  WHEEL=$(ls "$WHEELHOUSE"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$WHEEL" ]; then
    JOBS=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
    mkdir -p "$WHEELHOUSE"
    say "building llama.cpp (llama-cpp-python $LLAMA_VERSION): $(expected_time) on $JOBS cores, once;"
    say "  the wheel is kept in $WHEELHOUSE, the full build log in $WHEELHOUSE/build.log"
    busy_note
    CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$JOBS}" \
      build_with_progress "$WHEELHOUSE/build.log" \
      "$PY" -m pip wheel -v --no-deps --no-cache-dir -w "$WHEELHOUSE" "llama-cpp-python==$LLAMA_VERSION" \
      || die "building llama-cpp-python failed (a C/C++ compiler and CMake are needed; the end of $WHEELHOUSE/build.log is above)"
    WHEEL=$(ls "$WHEELHOUSE"/llama_cpp_python-*.whl | head -n1)
  else
    say "wheel from the wheelhouse: $WHEEL"
  fi
fi
# --force-reinstall: an earlier install of the same version may have other build flags.
"$PY" -m pip install -q --force-reinstall --no-deps "$WHEEL"

# -- eft-local --------------------------------------------------------------------------------
# setuptools ends every editable install of a flat layout (eft_local/ beside pyproject.toml) with a
# "BuildBackendWarning: Editable installation. !! ... Please be careful with folders in your working
# directory with the same name as your package" block: information only (InformationOnly), nothing
# to act on (that folder is the package itself). Its other modes warn too ('compat' is deprecated,
# 'strict' warns about its link tree), so this one message is filtered; every other warning shows.
PYTHONWARNINGS="ignore:Editable installation" "$PY" -m pip install -q -e .
RPC_OK=$("$PY" -c 'import llama_cpp; print("yes" if getattr(llama_cpp, "llama_supports_rpc", lambda: False)() else "no")')
say "done: llama.cpp for $BACKEND, RPC $RPC_OK"
say "start the chat app with: .venv/bin/eft-local   (or: . .venv/bin/activate && eft-local)"
