pytest_plugins = ["whisper_release.testing"]
