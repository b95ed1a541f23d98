#!/usr/bin/env bash
# Builder stage: configure and compile whisper.cpp from the verified tree in /src/whisper.cpp.
# Inputs (build args, all from release.toml via build.py): CMAKE_FLAGS, EXPECTED_CPU_VARIANT,
# WHISPER_BUILD_COMMIT, WHISPER_BUILD_NUMBER, SOURCE_DATE_EPOCH, JOBS.
set -euxo pipefail

: "${CMAKE_FLAGS:?}" "${EXPECTED_CPU_VARIANT:?}" "${WHISPER_BUILD_COMMIT:?}" "${SOURCE_DATE_EPOCH:?}"
read -r -a flags <<<"$CMAKE_FLAGS"

src=/src/whisper.cpp
bld=/build/cmake
out=/build/out
mkdir -p "$bld" "$out/lib" "$out/bin"
# The prefix map keeps the container's paths out of __FILE__ strings and debug info.
prefix_map="-ffile-prefix-map=${src}=whisper.cpp -ffile-prefix-map=${bld}=build"

cmake -S "$src" -B "$bld" \
  "${flags[@]}" \
  -DCMAKE_C_FLAGS="$prefix_map" -DCMAKE_CXX_FLAGS="$prefix_map" \
  '-DCMAKE_INSTALL_RPATH=$ORIGIN' -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
  -DWHISPER_BUILD_COMMIT="$WHISPER_BUILD_COMMIT" -DWHISPER_BUILD_NUMBER="${WHISPER_BUILD_NUMBER:-0}" \
  -DWHISPER_BUILD_TESTS=OFF -DWHISPER_BUILD_SERVER=OFF -DGGML_CCACHE=OFF \
  2>&1 | tee /build/configure.log

# With SOURCE_DATE_EPOCH set ggml silently drops every ISA flag it was not given (FACTS.md):
# a scalar build would still compile and pass a smoke test, so the configure line is checked.
got=$(sed -n 's/.*Adding CPU backend variant ggml-cpu: \([^ ]*\).*/\1/p' /build/configure.log)
if [[ "$got" != "$EXPECTED_CPU_VARIANT" ]]; then
  echo "error: cmake chose CPU backend flags '${got:-<none>}', expected '$EXPECTED_CPU_VARIANT'; fix [build].cmake_flags in release.toml." >&2
  exit 1
fi

cmake --build "$bld" -j "${JOBS:-2}" --target whisper whisper-quantize

# Dereferenced copies: artifacts hold real files under their SONAMEs (object stores keep no symlinks).
cp -L "$bld/src/libwhisper.so" "$out/lib/libwhisper.so"
for lib in libggml libggml-base libggml-cpu; do
  cp -L "$bld/ggml/src/$lib.so" "$out/lib/$lib.so.0"
done
cp -L "$(gcc -print-file-name=libgomp.so.1)" "$out/lib/libgomp.so.1"
cp "$bld/bin/whisper-quantize" "$out/bin/"

{
  echo "compiler=$(g++ --version | head -n1)"
  echo "cmake=$(cmake --version | head -n1)"
  echo "cpu_variant=$got"
} >"$out/toolchain.txt"
