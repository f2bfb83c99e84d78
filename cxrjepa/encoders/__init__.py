"""Frozen feature encoders from any source, behind one interface: the one owner of "the encoder behind an
artifact" for embed, probe (robustness), the report, export and SALT's teacher.

:func:`load_feature_encoder` turns an encoder *spec* into a :class:`FeatureEncoder`. The kinds of spec are
registered in :mod:`cxrjepa.encoders.registry` (one module each):

* a cxrjepa run artifact or export folder (``RUN`` or ``RUN/encoder``), and ``random:ARCH`` / ``random:RUN``
  (:mod:`~cxrjepa.encoders.runs`);
* ``pixels:SIZE`` (:mod:`~cxrjepa.encoders.pixels`);
* ``timm:NAME`` plus a local weights file (:mod:`~cxrjepa.encoders.timm_weights`);
* a local Hugging Face folder or ``hf:FOLDER`` (:mod:`~cxrjepa.encoders.huggingface`).

Nothing is ever downloaded. Adding a kind: write ``load(spec, options) -> FeatureEncoder`` in a module of
this package, decorate it with :func:`register_encoder` and import the module below (docs/embeddings.md).
"""

# importing a kind's module registers it (folder detection is tried in registration order)
from cxrjepa.encoders import huggingface, pixels, runs, timm_weights  # noqa: F401
from cxrjepa.encoders.base import EncoderOutput, FeatureEncoder, Preprocess, resolve_device
from cxrjepa.encoders.registry import (
    EncoderKind,
    EncoderSpec,
    LoadOptions,
    encoder_input_ref,
    encoder_kind,
    encoder_kinds,
    load_feature_encoder,
    parse_encoder_spec,
    recorded_spec,
    register_encoder,
)
from cxrjepa.encoders.runs import cxrjepa_encoder_ref

__all__ = [
    "EncoderKind",
    "EncoderOutput",
    "EncoderSpec",
    "FeatureEncoder",
    "LoadOptions",
    "Preprocess",
    "cxrjepa_encoder_ref",
    "encoder_input_ref",
    "encoder_kind",
    "encoder_kinds",
    "load_feature_encoder",
    "parse_encoder_spec",
    "recorded_spec",
    "register_encoder",
    "resolve_device",
]
