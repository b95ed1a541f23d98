#!/usr/bin/env bash
# Organizer stage: lay out /release_artifacts from the builder's outputs. The logic is
# whisper_release/layout/artifacts.py and sbom.py (copied beside this script), the same code the unit
# tests run.
set -euxo pipefail

: "${SOURCE_DATE_EPOCH:?}"
# The SBOM is written by cyclonedx-python-lib: its wheels (and their dependencies') were fetched and
# sha256-verified on the host; wheels are zip files, so the image's python3 unpacks them (no pip here).
tools=/opt/sbom-tools
mkdir -p "$tools"
for whl in /inputs/sbom/wheels/*.whl; do
  python3 -m zipfile -e "$whl" "$tools"
done
# Exact versions of the Debian packages the SBOM records (libgomp1 is shipped, the compilers built it).
dpkg-query -W -f='${Package}\t${Version}\t${Architecture}\t${source:Package}\n' >/build/dpkg.tsv

PYTHONPATH="$tools" python3 /packaging/artifacts.py \
  --lib-dir /build/out/lib \
  --models-dir /build/out/models \
  --toolchain /build/out/toolchain.txt \
  --build-json /inputs/build.json \
  --template /packaging/README.template.md \
  --source-dir /src/whisper.cpp \
  --share-dir /usr/share \
  --sbom-inputs /inputs/sbom \
  --dpkg /build/dpkg.tsv \
  --os-release /etc/os-release \
  --epoch "$SOURCE_DATE_EPOCH" \
  --out /release_artifacts
