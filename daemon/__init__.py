"""evolvd: a daemon that makes a served LLM improve from its own production traffic, safely."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("evolvd")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
