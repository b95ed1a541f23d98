"""whisper-release: release tooling and verification for whisper.cpp on Xeon servers.

Modules (data flows one way): pins -> cache/download -> sources, ct2 + ggml (convert) -> models
-> fetch -> build (docker) -> artifacts -> verify checks -> publish (S3) -> consumer (pull).
Nothing here does I/O at import time; tasks.py and noxfile.py are thin entry points over it.
"""

__version__ = "0.1.0"
