"""cxrjepa: self-supervised encoders and embeddings from chest X-ray and ultrasound archives."""

from importlib.metadata import PackageNotFoundError, version

try:  # installed (editable or wheel)
    __version__ = version("cxrjepa")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.1.0"

__all__ = ["__version__"]
