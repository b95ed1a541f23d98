#!/usr/bin/env bash
# Organizer stage: lay out /release_artifacts from the builder's outputs. The logic is
# whisper_release/artifacts.py (copied beside this script), the same code the unit tests run.
set -euxo pipefail

: "${SOURCE_DATE_EPOCH:?}"
python3 /packaging/artifacts.py \
  --lib-dir /build/out/lib \
  --models-dir /build/out/models \
  --toolchain /build/out/toolchain.txt \
  --build-json /inputs/build.json \
  --template /packaging/README.template.md \
  --epoch "$SOURCE_DATE_EPOCH" \
  --out /release_artifacts
