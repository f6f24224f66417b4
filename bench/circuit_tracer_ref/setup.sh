#!/usr/bin/env bash
# Creates the separate virtualenv in which circuit-tracer (the reference implementation for the
# issue #4 benchmark) runs. It is separate because circuit-tracer 0.5.0 pins transformers<=4.57.3,
# while the project's main venv uses transformers 5.x: never install this into the main venv.
#
# Usage:  bash bench/circuit_tracer_ref/setup.sh          (idempotent; a no-op once the stamp exists)
#         ATLAS_CT_VENV=/some/dir bash bench/circuit_tracer_ref/setup.sh
#         ATLAS_CT_FORCE=1 bash bench/circuit_tracer_ref/setup.sh   (reinstall)
set -euo pipefail

CT_VENV="${ATLAS_CT_VENV:-$HOME/.cache/circuit-atlas/ct-venv}"
MAIN_VENV="$HOME/.cache/circuit-atlas/venv"
# The pins, in one place. Changing them invalidates the stamp, so the venv is rebuilt.
PINS=(
  "circuit-tracer==0.5.0"
  "transformers>=4.56,<=4.57.3"
  "torch==2.15.0"
  "transformer-lens>=2.16,<3"
  "psutil"
  # transformer-lens 2.x needs numpy<2; recent pyarrow (pulled by datasets) refuses numpy 1.x at import.
  "pyarrow<21"
)
STAMP="$CT_VENV/.circuit-atlas-ct-stamp"
WANT="${PINS[*]}"

if [[ "$(realpath -m "$CT_VENV")" == "$(realpath -m "$MAIN_VENV")" ]]; then
  echo "error: ATLAS_CT_VENV points at the main venv ($MAIN_VENV); circuit-tracer needs its own" >&2
  exit 2
fi

if [[ -z "${ATLAS_CT_FORCE:-}" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "circuit-tracer venv ready: $CT_VENV/bin/python"
  exit 0
fi

PY="${ATLAS_CT_PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
if [[ -z "$PY" ]]; then
  echo "error: no python3 found; set ATLAS_CT_PYTHON to a Python >= 3.10 interpreter" >&2
  exit 2
fi

echo "creating circuit-tracer venv at $CT_VENV with $PY"
"$PY" -m venv "$CT_VENV"
"$CT_VENV/bin/python" -m pip install --quiet --upgrade pip
"$CT_VENV/bin/python" -m pip install --quiet "${PINS[@]}"
# Fail now (not in the middle of a benchmark) if the imports are broken.
"$CT_VENV/bin/python" - <<'PY'
import circuit_tracer, transformer_lens, transformers, torch
from importlib.metadata import version
print("circuit-tracer", version("circuit-tracer"), "| transformer-lens", version("transformer-lens"),
      "| transformers", transformers.__version__, "| torch", torch.__version__)
PY
echo "$WANT" > "$STAMP"
echo "circuit-tracer venv ready: $CT_VENV/bin/python"
