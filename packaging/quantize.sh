#!/usr/bin/env bash
# Builder stage, after the compile layer: quantize every f16 model in /inputs/models to every type
# in QUANTIZE (space-separated, release.toml [build] quantize). A changed model or type list reruns
# only this layer, never the compile.
set -euxo pipefail

: "${QUANTIZE:?}"
read -r -a types <<<"$QUANTIZE"
out=/build/out/models
mkdir -p "$out"
shopt -s nullglob
models=(/inputs/models/*.bin)
((${#models[@]})) || { echo "error: no f16 models in /inputs/models; the build context is incomplete." >&2; exit 1; }
for f16 in "${models[@]}"; do
  name=$(basename "$f16" .bin)
  for type in "${types[@]}"; do
    LD_LIBRARY_PATH=/build/out/lib /build/out/bin/whisper-quantize "$f16" "$out/ggml-${name}-${type}.bin" "$type"
  done
done
