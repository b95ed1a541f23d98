"""ctypes binding of whisper.cpp's C API, exactly as declared in whisper.h v1.8.5.

`whisper_full` takes `struct whisper_full_params` BY VALUE, so every field, nested struct and
callback slot below mirrors the header in order and type; tests compare each offset with a C probe
compiled against the verified header. The CPU's flags (from CPUID) are checked before the library is
loaded: a missing AVX2 must be a Python error, never a SIGILL. An artifact with runtime CPU modules
gets exactly one registered with ggml before any model is opened (runtime/modules.py chooses it).
"""

from __future__ import annotations

import collections
import ctypes
import os
import threading
from collections.abc import Sequence
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_void_p,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whisper_release.core.errors import ConfigError, VerificationError
from whisper_release.layout.artifacts import HPARAM_ORDER
from whisper_release.runtime import cpu, modules
from whisper_release.runtime.known_defects import BINDING_VERSION, SHORT_AUDIO_MIN_SAMPLES
from whisper_release.weights import ggml

LIBRARY = "libwhisper.so"
SAMPLE_RATE = 16000

# One encoder frame per 320 samples (mel hop 160, conv stride 2): 1500 frames = 30 s, every
# Whisper model's n_audio_ctx.
SAMPLES_PER_AUDIO_FRAME = 320
MAX_AUDIO_CTX = 1500
# The measured setting (docs/performance.md, sample set of 3-11 s clips): a window fitted to the
# clip but never below 750 frames (15 s) kept WER within 3 points of the full window, while a tight
# fit lost 14-23 points. Clips of 15 s or more were not measured, so they keep the full window.
AUDIO_CTX_FLOOR = 750
FIT_BELOW_SAMPLES = 15 * SAMPLE_RATE
AUDIO_CTX_MARGIN = 64

# enum whisper_sampling_strategy
WHISPER_SAMPLING_GREEDY = 0
WHISPER_SAMPLING_BEAM_SEARCH = 1

# Callback types (ggml.h / whisper.h). Opaque pointers travel as c_void_p.
ggml_log_callback = CFUNCTYPE(None, c_int, c_char_p, c_void_p)
ggml_abort_callback = CFUNCTYPE(c_bool, c_void_p)
whisper_new_segment_callback = CFUNCTYPE(None, c_void_p, c_void_p, c_int, c_void_p)
whisper_progress_callback = CFUNCTYPE(None, c_void_p, c_void_p, c_int, c_void_p)
whisper_encoder_begin_callback = CFUNCTYPE(c_bool, c_void_p, c_void_p, c_void_p)
whisper_logits_filter_callback = CFUNCTYPE(
    None, c_void_p, c_void_p, c_void_p, c_int, POINTER(c_float), c_void_p
)


class whisper_ahead(Structure):
    _fields_ = [("n_text_layer", c_int), ("n_head", c_int)]


class whisper_aheads(Structure):
    _fields_ = [("n_heads", c_size_t), ("heads", POINTER(whisper_ahead))]


class whisper_context_params(Structure):
    _fields_ = [
        ("use_gpu", c_bool),
        ("flash_attn", c_bool),
        ("gpu_device", c_int),
        ("dtw_token_timestamps", c_bool),
        ("dtw_aheads_preset", c_int),  # enum whisper_alignment_heads_preset
        ("dtw_n_top", c_int),
        ("dtw_aheads", whisper_aheads),
        ("dtw_mem_size", c_size_t),
    ]


class whisper_grammar_element(Structure):
    _fields_ = [("type", c_int), ("value", c_uint32)]  # enum whisper_gretype, code point/rule id


class whisper_vad_params(Structure):
    _fields_ = [
        ("threshold", c_float),
        ("min_speech_duration_ms", c_int),
        ("min_silence_duration_ms", c_int),
        ("max_speech_duration_s", c_float),
        ("speech_pad_ms", c_int),
        ("samples_overlap", c_float),
    ]


class _greedy(Structure):
    _fields_ = [("best_of", c_int)]


class _beam_search(Structure):
    _fields_ = [("beam_size", c_int), ("patience", c_float)]


class whisper_full_params(Structure):
    _fields_ = [
        ("strategy", c_int),  # enum whisper_sampling_strategy
        ("n_threads", c_int),
        ("n_max_text_ctx", c_int),
        ("offset_ms", c_int),
        ("duration_ms", c_int),
        ("translate", c_bool),
        ("no_context", c_bool),
        ("no_timestamps", c_bool),
        ("single_segment", c_bool),
        ("print_special", c_bool),
        ("print_progress", c_bool),
        ("print_realtime", c_bool),
        ("print_timestamps", c_bool),
        ("token_timestamps", c_bool),
        ("thold_pt", c_float),
        ("thold_ptsum", c_float),
        ("max_len", c_int),
        ("split_on_word", c_bool),
        ("max_tokens", c_int),
        ("debug_mode", c_bool),
        ("audio_ctx", c_int),
        ("tdrz_enable", c_bool),
        ("suppress_regex", c_char_p),
        ("initial_prompt", c_char_p),
        ("carry_initial_prompt", c_bool),
        ("prompt_tokens", POINTER(c_int32)),
        ("prompt_n_tokens", c_int),
        ("language", c_char_p),
        ("detect_language", c_bool),
        ("suppress_blank", c_bool),
        ("suppress_nst", c_bool),
        ("temperature", c_float),
        ("max_initial_ts", c_float),
        ("length_penalty", c_float),
        ("temperature_inc", c_float),
        ("entropy_thold", c_float),
        ("logprob_thold", c_float),
        ("no_speech_thold", c_float),
        ("greedy", _greedy),
        ("beam_search", _beam_search),
        ("new_segment_callback", whisper_new_segment_callback),
        ("new_segment_callback_user_data", c_void_p),
        ("progress_callback", whisper_progress_callback),
        ("progress_callback_user_data", c_void_p),
        ("encoder_begin_callback", whisper_encoder_begin_callback),
        ("encoder_begin_callback_user_data", c_void_p),
        ("abort_callback", ggml_abort_callback),
        ("abort_callback_user_data", c_void_p),
        ("logits_filter_callback", whisper_logits_filter_callback),
        ("logits_filter_callback_user_data", c_void_p),
        ("grammar_rules", POINTER(POINTER(whisper_grammar_element))),
        ("n_grammar_rules", c_size_t),
        ("i_start_rule", c_size_t),
        ("grammar_penalty", c_float),
        ("vad", c_bool),
        ("vad_model_path", c_char_p),
        ("vad_params", whisper_vad_params),
    ]


# (name, restype, argtypes) of every function this binding uses.
_CTX = c_void_p
_FUNCTIONS: list[tuple[str, Any, list[Any]]] = [  # type: ignore[assignment]
    ("whisper_version", c_char_p, []),
    ("whisper_print_system_info", c_char_p, []),
    ("whisper_log_set", None, [ggml_log_callback, c_void_p]),
    ("whisper_context_default_params", whisper_context_params, []),
    ("whisper_full_default_params", whisper_full_params, [c_int]),
    ("whisper_init_from_file_with_params", _CTX, [c_char_p, whisper_context_params]),
    ("whisper_free", None, [_CTX]),
    ("whisper_full", c_int, [_CTX, whisper_full_params, POINTER(c_float), c_int]),
    ("whisper_full_n_segments", c_int, [_CTX]),
    ("whisper_full_get_segment_text", c_char_p, [_CTX, c_int]),
    ("whisper_full_get_segment_t0", c_int64, [_CTX, c_int]),
    ("whisper_full_get_segment_t1", c_int64, [_CTX, c_int]),
    ("whisper_is_multilingual", c_int, [_CTX]),
    ("whisper_model_type_readable", c_char_p, [_CTX]),
] + [(f"whisper_model_{h}", c_int, [_CTX]) for h in HPARAM_ORDER]

# whisper.h has one getter per ggml header field: whisper_model_<name>.
HPARAM_GETTERS = HPARAM_ORDER


@dataclass(frozen=True)
class Segment:
    t0: float  # seconds
    t1: float
    text: str


def fitted_audio_ctx(n_samples: int, floor: int = AUDIO_CTX_FLOOR) -> int:
    """`whisper_full_params.audio_ctx` for a clip of `n_samples` 16 kHz samples: enough encoder
    frames for the clip plus a margin, at least `floor`, for clips under 15 s; 0 (the library's
    full 30 s window) for longer ones."""
    if n_samples < 0:
        raise ConfigError(f"fitted_audio_ctx needs a sample count of 0 or more, got {n_samples}.")
    if not 0 <= floor <= MAX_AUDIO_CTX:
        raise ConfigError(
            f"The audio_ctx floor must be 0 to {MAX_AUDIO_CTX} encoder frames (750 = 15 s), got {floor}."
        )
    if n_samples >= FIT_BELOW_SAMPLES:
        return 0
    frames = -(-n_samples // SAMPLES_PER_AUDIO_FRAME) + AUDIO_CTX_MARGIN
    return int(max(frames, floor))


class Whisper:
    """One loaded libwhisper. Use `open(model)` as a context manager, or `transcribe` for one-offs."""

    def __init__(self, lib: ctypes.CDLL, path: Path, cpu_module: modules.Choice) -> None:
        self.lib = lib
        self.path = path
        # The CPU module this process runs (a linked floor, or the one registered at load time).
        self.cpu_module = cpu_module
        self._log: collections.deque[str] = collections.deque(maxlen=40)
        self._log_lock = threading.Lock()

        def _on_log(level: int, text: bytes | None, _user: Any) -> None:
            if text:
                with self._log_lock:
                    self._log.append(text.decode("utf-8", "replace").rstrip("\n"))

        # The C side keeps only the function pointer: keep the ctypes object alive as long as the
        # library, or the next log line jumps into freed memory.
        self._log_callback = ggml_log_callback(_on_log)
        lib.whisper_log_set(self._log_callback, None)

    @property
    def version(self) -> str:
        return (self.lib.whisper_version() or b"").decode()

    def system_info(self) -> str:
        return (self.lib.whisper_print_system_info() or b"").decode()

    def recent_log(self) -> list[str]:
        with self._log_lock:
            return list(self._log)

    def open(self, model_path: str | os.PathLike[str], *, use_gpu: bool = False) -> Context:
        return Context(self, Path(model_path), use_gpu=use_gpu)

    def transcribe(
        self,
        model_path: str | os.PathLike[str],
        pcm_f32_16k: np.ndarray,
        *,
        threads: int = 2,
        beam: int | None = None,
        language: str = "en",
        audio_ctx: int | None = None,
        max_tokens: int | None = None,
    ) -> list[Segment]:
        with self.open(model_path) as ctx:
            return ctx.transcribe(
                pcm_f32_16k,
                threads=threads,
                beam=beam,
                language=language,
                audio_ctx=audio_ctx,
                max_tokens=max_tokens,
            )


class Context:
    """A whisper_context: freed deterministically by `close()` or leaving the `with` block."""

    def __init__(self, whisper: Whisper, model_path: Path, *, use_gpu: bool = False) -> None:
        self.whisper = whisper
        self.model_path = model_path
        if not model_path.is_file():
            raise VerificationError(
                f"Model file {model_path} does not exist; pass the path of a ggml .bin file."
            )
        _check_tensor_headers(model_path)
        lib = whisper.lib
        cparams = lib.whisper_context_default_params()
        cparams.use_gpu = use_gpu
        ptr = lib.whisper_init_from_file_with_params(os.fsencode(model_path), cparams)
        if not ptr:
            tail = "; ".join(whisper.recent_log()[-3:])
            raise VerificationError(
                f"whisper.cpp could not load the model {model_path} (library log: {tail or 'empty'}); "
                f"check the file against its SHA256SUMS."
            )
        self._ctx: int | None = ptr

    def _handle(self) -> int:
        if self._ctx is None:
            raise VerificationError(
                f"The whisper context for {self.model_path} is already closed; open the model again."
            )
        return self._ctx

    def close(self) -> None:
        if self._ctx is not None:
            self.whisper.lib.whisper_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def hparams(self) -> dict[str, int]:
        h = self._handle()
        return {name: int(getattr(self.whisper.lib, f"whisper_model_{name}")(h)) for name in HPARAM_GETTERS}

    def model_type(self) -> str:
        return (self.whisper.lib.whisper_model_type_readable(self._handle()) or b"").decode()

    def transcribe(
        self,
        pcm_f32_16k: np.ndarray,
        *,
        threads: int = 2,
        beam: int | None = None,
        language: str = "en",
        audio_ctx: int | None = None,
        max_tokens: int | None = None,
    ) -> list[Segment]:
        """`audio_ctx`: encoder frames to compute (None or 0: the full window; see
        `fitted_audio_ctx` for the measured choice for short clips). `max_tokens`: a cap on the
        tokens decoded per segment (None or 0: no cap), which bounds the decoder's work."""
        pcm = np.ascontiguousarray(pcm_f32_16k, dtype=np.float32)
        if pcm.ndim != 1 or pcm.size == 0:
            raise VerificationError(
                f"Audio for {self.model_path.name} must be non-empty 1-D float32 16 kHz mono samples, "
                f"got shape {pcm.shape}; decode it with whisper_release.runtime.audio.read_wav."
            )
        if pcm.size < SHORT_AUDIO_MIN_SAMPLES:
            # Known defect (runtime/known_defects.py, #3956): 1.8.5 reads past shorter input.
            # Trailing silence changes no transcript.
            pcm = np.concatenate([pcm, np.zeros(SHORT_AUDIO_MIN_SAMPLES - pcm.size, dtype=np.float32)])
        lib = self.whisper.lib
        h = self._handle()
        n_audio_ctx = int(lib.whisper_model_n_audio_ctx(h))
        if audio_ctx is not None and not 0 <= audio_ctx <= n_audio_ctx:
            # whisper.cpp rejects a larger value only with a return code, and reads a negative one
            # as the default: say so here, naming the limit.
            raise ConfigError(
                f"audio_ctx for {self.model_path.name} must be 0 (full window) to {n_audio_ctx} "
                f"encoder frames, got {audio_ctx}."
            )
        strategy = WHISPER_SAMPLING_BEAM_SEARCH if beam else WHISPER_SAMPLING_GREEDY
        params = lib.whisper_full_default_params(strategy)
        params.n_threads = int(threads)
        params.print_progress = False
        params.print_realtime = False
        params.print_timestamps = False
        params.print_special = False
        params.language = language.encode()
        if beam:
            params.beam_search.beam_size = int(beam)
        params.audio_ctx = int(audio_ctx or 0)
        if max_tokens is not None and max_tokens < 0:
            raise ConfigError(
                f"max_tokens for {self.model_path.name} must be 0 (no cap) or more, got {max_tokens}."
            )
        params.max_tokens = int(max_tokens or 0)
        rc = lib.whisper_full(h, params, pcm.ctypes.data_as(POINTER(c_float)), int(pcm.size))
        if rc != 0:
            tail = "; ".join(self.whisper.recent_log()[-3:])
            raise VerificationError(
                f"whisper_full failed with code {rc} on {pcm.size} samples with {self.model_path} "
                f"(library log: {tail or 'empty'})."
            )
        segments = []
        for i in range(lib.whisper_full_n_segments(h)):
            text = (lib.whisper_full_get_segment_text(h, i) or b"").decode("utf-8", "replace")
            # t0/t1 are in units of 10 ms.
            segments.append(
                Segment(
                    lib.whisper_full_get_segment_t0(h, i) / 100.0,
                    lib.whisper_full_get_segment_t1(h, i) / 100.0,
                    text,
                )
            )
        return segments


def _check_tensor_headers(model_path: Path) -> None:
    """Every tensor header well-formed (n_dims 1..4, names, types, sizes): 1.8.5 copies n_dims
    dims into a 4-slot stack array unchecked (runtime/known_defects.py, #3957). Reads headers only."""
    for _tensor in ggml.iter_tensors(model_path):
        pass


_loaded: dict[Path, Whisper] = {}
_load_lock = threading.Lock()


def _register_cpu_module(lib_dir: Path, choice: modules.Choice) -> None:
    """ggml_backend_load(lib_dir/<module>): libggml (already loaded as libwhisper's dependency,
    the same handle) registers that module's CPU backend; nothing else is registered."""
    path = lib_dir / choice.library
    ggml_lib = ctypes.CDLL(str(lib_dir / "libggml.so.0"))
    ggml_lib.ggml_backend_load.restype = c_void_p
    ggml_lib.ggml_backend_load.argtypes = [c_char_p]
    if not ggml_lib.ggml_backend_load(os.fsencode(path)):
        raise VerificationError(
            f"ggml could not load the CPU module {path} (score 0 on this CPU, or not a ggml backend); "
            f"pull the artifact again, or set {modules.FORCE}={modules.CPU_FLOOR}."
        )


def load(
    lib_dir: str | os.PathLike[str],
    *,
    required_flags: Sequence[str],
    cpuinfo: str | os.PathLike[str] | None = None,
    cpu_module: str | None = None,
) -> Whisper:
    """Load `lib_dir/libwhisper.so` (its ggml libraries resolve through its $ORIGIN rpath), after
    checking with CPUID that this CPU has `required_flags` (the artifact's artifact.json states
    them), and register the CPU module runtime/modules.py chooses. `cpuinfo`: a file in
    /proc/cpuinfo's format to check instead (tests describe another CPU). `cpu_module`: register
    this variant unchecked and untested (the self-test's own child process only)."""
    cpu.require_flags(list(required_flags), f"the whisper.cpp build in {lib_dir}", cpuinfo)
    path = (Path(lib_dir) / LIBRARY).resolve()
    with _load_lock:
        if path in _loaded:
            return _loaded[path]
        if not path.is_file():
            raise VerificationError(f"{path} does not exist: wanted the release's {LIBRARY} in {lib_dir}.")
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise VerificationError(
                f"Cannot load {path}: {e}; the ggml libraries and libgomp must sit beside it "
                f"(its rpath is $ORIGIN)."
            ) from None
        for name, restype, argtypes in _FUNCTIONS:
            try:
                fn = getattr(lib, name)
            except AttributeError:
                raise VerificationError(
                    f"{path} lacks the symbol {name}: wanted whisper.cpp's v1.8.5 C API; "
                    "rebuild from the pinned source."
                ) from None
            fn.restype = restype
            fn.argtypes = argtypes
        version = (lib.whisper_version() or b"").decode("utf-8", "replace")
        if version != BINDING_VERSION:
            # whisper_full takes its params struct by value: another release's layout would be
            # read as garbage (or past the struct) inside the library.
            raise VerificationError(
                f"{path} is whisper.cpp {version or '(no version)'}, but this binding was written for "
                f"whisper.cpp {BINDING_VERSION}'s C API; use the libwhisper.so of the same release, or a "
                f"whisper-release made for {version or 'that library'}."
            )
        meta = modules.read_metadata(path.parent)
        if cpu_module is not None:
            by_name = {v.name: v for v in modules.variants_of(meta)}
            v = by_name[cpu_module]
            choice = modules.Choice("runtime", v.name, v.library, v.score, forced=True)
        else:
            choice = modules.choose(path.parent, meta)
        # Whisper() routes whisper's and ggml's log into its buffer first: ggml's "loaded CPU backend"
        # line must not reach stderr, where an error is one sentence.
        whisper = Whisper(lib, path, choice)
        if choice.dispatch == "runtime":
            _register_cpu_module(path.parent, choice)
        _loaded[path] = whisper
        return whisper
