#!/usr/bin/env bash
# Builder stage: configure and compile whisper.cpp from the verified tree in /src/whisper.cpp.
# Inputs (build args, all from release.toml via build.py): CMAKE_FLAGS, EXPECTED_CPU_VARIANT,
# CPU_VARIANTS, WHISPER_BUILD_COMMIT, WHISPER_BUILD_NUMBER, SOURCE_DATE_EPOCH, JOBS.
# CPU_VARIANTS is `<variant>=<compile flags>` per shipped CPU module, the floor first. One entry (or
# none, as the benchmark's reference builds pass): the single-ISA build, libggml-cpu.so.0 linked in.
# Several: ggml's runtime-dispatched modules (GGML_BACKEND_DL), one libggml-cpu-<variant>.so each.
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
configured() {  # the flags cmake printed for CPU backend target $1
  sed -n "s/.*Adding CPU backend variant $1: \([^ ]*\).*/\1/p" /build/configure.log
}
read -r -a variants <<<"${CPU_VARIANTS:-}"
modules=()
if (( ${#variants[@]} <= 1 )); then
  got=$(configured ggml-cpu)
  if [[ "$got" != "$EXPECTED_CPU_VARIANT" ]]; then
    echo "error: cmake chose CPU backend flags '${got:-<none>}', expected '$EXPECTED_CPU_VARIANT'; fix [build].cmake_flags in release.toml." >&2
    exit 1
  fi
else
  for entry in "${variants[@]}"; do
    name=${entry%%=*} want=${entry#*=}
    got=$(configured "ggml-cpu-$name")
    if [[ "$got" != "$want" ]]; then
      echo "error: cmake chose flags '${got:-<none>}' for CPU module $name, expected '$want'; fix [build.cpu_variant.$name] in release.toml." >&2
      exit 1
    fi
    modules+=("$name")
  done
fi

if (( ${#modules[@]} == 0 )); then
  cmake --build "$bld" -j "${JOBS:-2}" --target whisper whisper-quantize
else
  # ggml makes each of its 14 x86 modules a dependency of libggml: building them all would cost about
  # four times the single-ISA compile. So the pinned modules (and ggml-base, what they link) are built
  # normally, then the targets above them with make's `<target>/fast` (the same compile and link
  # commands without the dependency walk), in link order. A missing piece fails the link.
  cmake --build "$bld" -j "${JOBS:-2}" --target ggml-base "${modules[@]/#/ggml-cpu-}"
  for target in ggml whisper common whisper-quantize; do
    cmake --build "$bld" -j "${JOBS:-2}" --target "$target/fast"
  done
fi

# Dereferenced copies: artifacts hold real files under their SONAMEs (object stores keep no symlinks).
cp -L "$bld/src/libwhisper.so" "$out/lib/libwhisper.so"
if (( ${#modules[@]} == 0 )); then
  cpu_libs=(libggml-cpu)
else
  cpu_libs=()
  for name in "${modules[@]}"; do
    # MODULE libraries land in the runtime output directory, unversioned: the loader dlopens them by path.
    cp -L "$bld/bin/libggml-cpu-$name.so" "$out/lib/libggml-cpu-$name.so"
  done
fi
for lib in libggml libggml-base "${cpu_libs[@]}"; do
  cp -L "$bld/ggml/src/$lib.so" "$out/lib/$lib.so.0"
done
cp -L "$(gcc -print-file-name=libgomp.so.1)" "$out/lib/libgomp.so.1"
cp "$bld/bin/whisper-quantize" "$out/bin/"

{
  echo "compiler=$(g++ --version | head -n1)"
  echo "cmake=$(cmake --version | head -n1)"
  if (( ${#modules[@]} == 0 )); then
    echo "cpu_variant=$got"
  else
    echo "cpu_variant=${modules[*]}"
  fi
} >"$out/toolchain.txt"
