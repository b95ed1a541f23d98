"""whisper-release: release tooling and verification for whisper.cpp on Xeon servers.

Subpackages, in data-flow order (lower layers never import higher ones; `nox -s lint` checks it with
import-linter): layout (the artifact contract, standard library only) and core (errors, console,
pins) -> weights (file formats) -> inputs (fetch, cache) -> build (docker) -> runtime (the ctypes
binding) -> verify (integrity, WER) -> s3 -> publish / consume -> bench. cli.py, tasks.py and
noxfile.py are the thin entry points. Nothing here does I/O at import time. The version is the
package metadata's (`whisper-release --version`), never a literal here.
"""
