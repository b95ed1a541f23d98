# Hermetic build of the whisper.cpp release artifacts. Built by `invoke build` (whisper_release.build.docker)
# from an assembled context (build/context/<profile>/) with --network=none. Every value comes from
# release.toml as a build arg; nothing is pulled (the base is a local debootstrap image).
ARG BASE_IMAGE

FROM ${BASE_IMAGE} AS builder
# One instruction each: the legacy builder commits a layer per instruction (seconds apiece).
ARG CMAKE_FLAGS EXPECTED_CPU_VARIANT CPU_VARIANTS WHISPER_BUILD_COMMIT WHISPER_BUILD_NUMBER=0 SOURCE_DATE_EPOCH JOBS=2
ENV LC_ALL=C.UTF-8 TZ=UTC
# Source and compile first: a changed model or packaging script must not recompile.
COPY packaging/compile.sh /packaging/compile.sh
COPY source/ /src/whisper.cpp/
RUN ["/bin/bash", "/packaging/compile.sh"]
ARG QUANTIZE_JOBS
COPY packaging/quantize.sh /packaging/quantize.sh
COPY models/ /inputs/models/
RUN ["/bin/bash", "/packaging/quantize.sh"]

FROM builder AS organizer
# ARGs are per stage: the manifest and the normalised mtimes need the epoch here too.
ARG SOURCE_DATE_EPOCH
COPY packaging/ /packaging/
# The SBOM writer (verified pure-Python wheels, unpacked by organize.sh) and the weights' licence source.
COPY sbom/ /inputs/sbom/
COPY build.json /inputs/build.json
RUN ["/bin/bash", "/packaging/organize.sh"]

FROM scratch AS output
COPY --from=organizer /release_artifacts /release_artifacts

# ---- reference builds for the benchmark (whisper_release.bench.references; not part of the release) -----
# The same verified source and compile script as the builder, other CMake flags: one stage for every
# [bench.reference.<name>] of release.toml (`native`: the ceiling on the build host, `generic`: what
# AVX2+FMA buys, `llamafile`: the release flags plus ggml's tinyBLAS kernels), chosen by build args.
# Built with `--target reference`; the legacy builder runs the stages above first (cached), and the
# flags are part of the RUN's cache key, so each reference keeps its own cached layer.
FROM ${BASE_IMAGE} AS reference
ARG REF_CMAKE_FLAGS REF_CPU_VARIANT WHISPER_BUILD_COMMIT SOURCE_DATE_EPOCH JOBS=2
ENV LC_ALL=C.UTF-8 TZ=UTC
COPY --from=builder /packaging/compile.sh /packaging/compile.sh
COPY --from=builder /src/whisper.cpp/ /src/whisper.cpp/
RUN CMAKE_FLAGS="$REF_CMAKE_FLAGS" EXPECTED_CPU_VARIANT="$REF_CPU_VARIANT" /bin/bash /packaging/compile.sh
