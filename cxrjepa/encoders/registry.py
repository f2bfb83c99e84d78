"""Encoder kinds, keyed by spec prefix or folder detection, in the style of timm's model registry.

A kind is a loader function registered with :func:`register_encoder`::

    @register_encoder("pixels", prefix="pixels:", usage="pixels:SIZE")
    def load_pixels(spec: EncoderSpec, options: LoadOptions) -> FeatureEncoder: ...

:func:`parse_encoder_spec` picks the kind of an ``--encoder`` value: the kind whose prefix it starts with,
else the first kind whose ``detect`` accepts the path, else the default kind (a cxrjepa run or export);
:func:`load_feature_encoder` calls that kind's loader, and :func:`encoder_input_ref` says how an artifact
records the encoder it reads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from cxrjepa.core.errors import UsageError
from cxrjepa.core.fingerprint import hash_obj
from cxrjepa.encoders.base import FeatureEncoder

#: what an encoder kind's target is: a file or folder; a file or folder when it exists, else a name
#: (``random:small`` / ``random:RUN``); a name (a timm model, a pixel size)
Target = Literal["path", "path-or-name", "name"]


@dataclass
class LoadOptions:
    """What a loader may use besides the spec. ``seed`` and ``image_size`` apply to ``random:`` encoders;
    ``normalization`` (``mean``/``std`` of [0, 1] intensities, e.g. a dataset's) is what ``random:`` and
    ``pixels:`` encoders normalize with."""

    seed: int = 0
    image_size: int | None = None
    normalization: dict | None = None


@dataclass
class EncoderSpec:
    """A parsed ``--encoder`` value: ``source`` names its kind, ``target`` is the rest (a path or a name)."""

    text: str
    source: str
    target: str
    weights: Path | None = None

    @property
    def kind(self) -> EncoderKind:
        return encoder_kind(self.source)

    @property
    def path(self) -> Path | None:
        """The file or folder the encoder is read from (what its fingerprint follows), if any."""
        if self.kind.reads_target(self.target):
            return Path(self.target)
        return self.weights if self.kind.weights else None

    def absolute(self) -> str:
        """The spec with absolute paths, so it loads the same encoder from any working directory."""
        kind = self.kind
        if kind.reads_target(self.target):
            return (kind.prefix or "") + str(Path(self.target).resolve())
        return self.text


Loader = Callable[[EncoderSpec, LoadOptions], FeatureEncoder]
RefMaker = Callable[[str, EncoderSpec], dict]


@dataclass(frozen=True)
class EncoderKind:
    """One registered kind of encoder (see the module docstring)."""

    name: str
    load: Loader
    #: the spec prefix that selects the kind (``random:``); ``None`` for kinds found by ``detect`` or the default
    prefix: str | None = None
    #: recognises a path as this kind (a Hugging Face folder) when no prefix matched
    detect: Callable[[Path], bool] | None = None
    target: Target = "name"
    #: takes ``--weights FILE`` (the target is then a model name, part of the input reference)
    weights: bool = False
    #: how an artifact records the encoder it reads, when the generic reference does not fit (a cxrjepa run)
    input_ref: RefMaker | None = None
    #: the spec's shape, for messages and docs (``random:SIZE[/PATCH]``)
    usage: str = ""

    def reads_target(self, target: str) -> bool:
        return self.target == "path" or (self.target == "path-or-name" and Path(target).exists())


_KINDS: dict[str, EncoderKind] = {}
_DEFAULT: list[str] = []


def register_encoder(
    name: str,
    *,
    prefix: str | None = None,
    detect: Callable[[Path], bool] | None = None,
    default: bool = False,
    target: Target = "name",
    weights: bool = False,
    input_ref: RefMaker | None = None,
    usage: str = "",
) -> Callable[[Loader], Loader]:
    """Decorator registering ``fn(spec, options) -> FeatureEncoder`` as the loader of the kind ``name``.

    ``prefix`` selects the kind from the spec text; ``detect(path)`` recognises an unprefixed path; the one
    ``default`` kind takes whatever else is given. Registering a name again replaces the earlier kind (with a
    warning, as timm does).
    """

    def deco(fn: Loader) -> Loader:
        if name in _KINDS:
            warnings.warn(f"Replacing the encoder kind '{name}' with {fn.__module__}.{fn.__name__}.", stacklevel=2)
        clash = [k.name for k in _KINDS.values() if prefix and k.prefix == prefix and k.name != name]
        if clash:
            raise ValueError(f"The encoder prefix '{prefix}' is already taken by the kind '{clash[0]}'.")
        _KINDS[name] = EncoderKind(name, fn, prefix, detect, target, weights, input_ref, usage or prefix or name)
        if default:
            _DEFAULT[:] = [name]
        return fn

    return deco


def encoder_kinds() -> list[EncoderKind]:
    """Every registered kind, in registration order."""
    return list(_KINDS.values())


def encoder_kind(name: str) -> EncoderKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise UsageError(f"Unknown encoder kind '{name}'; known: {', '.join(_KINDS)}.") from None


def parse_encoder_spec(text: str | Path, weights: str | Path | None = None) -> EncoderSpec:
    """The kind and target of an ``--encoder`` value (see the module docstring)."""
    text = str(text)
    w = Path(weights) if weights else None
    for kind in _KINDS.values():
        if kind.prefix and text.startswith(kind.prefix):
            return EncoderSpec(text, kind.name, text[len(kind.prefix) :], w if kind.weights else None)
    if w is not None:
        with_weights = " or ".join(f"--encoder {k.usage}" for k in _KINDS.values() if k.weights)
        raise UsageError(f"--weights goes with {with_weights}.")
    path = Path(text)
    for kind in _KINDS.values():
        if kind.detect is not None and kind.detect(path):
            return EncoderSpec(text, kind.name, text)
    return EncoderSpec(text, _DEFAULT[0], text)


def load_feature_encoder(
    spec: str | Path | EncoderSpec,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    image_size: int | None = None,
    normalization: dict | None = None,
) -> FeatureEncoder:
    """Load the encoder named by ``spec`` in eval mode on ``device`` (options: :class:`LoadOptions`)."""
    sp = spec if isinstance(spec, EncoderSpec) else parse_encoder_spec(spec, weights)
    enc = sp.kind.load(sp, LoadOptions(seed, image_size, normalization))
    return enc.to(device)


def encoder_input_ref(name: str, encoder: str | Path, weights: str | Path | None = None) -> dict:
    """How a downstream artifact records an encoder it reads (embed's ``encoder``, SALT's ``teacher``).

    A cxrjepa run by its content fingerprint (a partial run is refused with one sentence), a bare export
    folder by its weights' sha256, a Hugging Face folder or a timm weights file by their files (plus the
    timm model name), and ``random:SIZE`` by the spec itself.
    """
    from cxrjepa.core.artifact import input_refs

    spec = parse_encoder_spec(encoder, weights)
    kind = spec.kind
    if kind.input_ref is not None:
        return kind.input_ref(name, spec)
    if spec.path is not None:
        ref = input_refs({name: spec.path})[0]
        what = {"source": spec.source, "model": spec.target if kind.weights else None}
        ref["fingerprint"] = hash_obj({**what, "path": ref["fingerprint"]})
        # not the artifact itself (random:RUN only borrows a run's architecture): readers must not follow it
        ref["kind"] = f"{spec.source}-encoder"
        return ref
    return {"name": name, "path": spec.text, "kind": "spec", "fingerprint": hash_obj({"spec": spec.text})}


def recorded_spec(record: dict) -> EncoderSpec:
    """The spec of the encoder an artifact recorded (an embeddings manifest's ``encoder``: ``load``, the spec
    with absolute paths, else ``spec``; and ``weights``)."""
    return parse_encoder_spec(record.get("load") or record.get("spec"), record.get("weights"))
