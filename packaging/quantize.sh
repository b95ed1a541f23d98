#!/usr/bin/env bash
# Builder stage, after the compile layer: quantize the f16 models in /inputs/models as QUANTIZE_JOBS
# lists them: `<f16 input>:<type>:<output file>` per job (whisper_release.build.docker.quantize_jobs;
# the output names come from the layout module, their one owner). A changed model or type list
# reruns only this layer, never the compile.
set -euxo pipefail

: "${QUANTIZE_JOBS:?}"
read -r -a jobs <<<"$QUANTIZE_JOBS"
out=/build/out/models
mkdir -p "$out"
for job in "${jobs[@]}"; do
  IFS=: read -r input type output <<<"$job"
  f16=/inputs/models/$input
  [[ -f $f16 ]] || { echo "error: $f16 is missing from the build context; QUANTIZE_JOBS names it." >&2; exit 1; }
  LD_LIBRARY_PATH=/build/out/lib /build/out/bin/whisper-quantize "$f16" "$out/$output" "$type"
done
