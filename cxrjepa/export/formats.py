"""The four export formats: how each is written, and how each is run on the check batch.

* ``safetensors`` -- the encoder as cxrjepa keeps it (``encoder.safetensors`` + ``config.json``), loadable with
  timm alone; checked through that documented timm snippet (clip encoders: through ``load_encoder``).
* ``onnx`` -- ``encoder.onnx`` from torch's ONNX exporter (``torch.export`` based, ``dynamo=True``) at the
  configured opset, one dynamic ``batch`` axis, input ``image`` = [0, 1] intensities (normalisation is inside
  the graph), outputs ``features`` (B, D) and ``patch_tokens`` (B, L, D); checked with onnxruntime (CPU).
* ``torchscript`` -- ``encoder.pt``, the same graph as the ONNX one. Image encoders are *scripted*, which keeps
  timm's code paths (any batch, any image size that is a multiple of the patch size, as in PyTorch); clip
  encoders are *traced* at their training clip shape (their tubelet embedding is not scriptable).
* ``hf`` -- a folder ``transformers.AutoModel.from_pretrained`` loads offline without remote code: the stock
  ``TimmWrapperModel`` (model_type ``timm_wrapper``) around the same timm architecture and weights, plus a
  ``preprocessor_config.json`` (``ViTImageProcessor``) that rescales stored pixels by ``1 / divide_by`` and
  normalises with the encoder's mean and std. Image encoders only: no stock class builds a tubelet embedding.

Every ``run_*`` returns (features, patch tokens) as float32 numpy arrays for rows ``rows`` of the check batch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrjepa.core.atomic import atomic_write_json
from cxrjepa.core.errors import UsageError
from cxrjepa.export.check import CheckBatch
from cxrjepa.models.export import CONFIG, WEIGHTS, LoadedEncoder

ONNX_FILE = "encoder.onnx"
TORCHSCRIPT_FILE = "encoder.pt"
HF_PROCESSOR = "preprocessor_config.json"
INPUT = "image"
OUTPUTS = ("features", "patch_tokens")
#: above this many bytes of weights the ONNX file keeps them in a side file (protobuf's 2 GiB limit)
ONNX_EXTERNAL_BYTES = 1_800_000_000

#: format -> the importable modules it needs (all of them in the ``cxrjepa[export]`` extra but transformers)
PACKAGES = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "hf": ("transformers",)}


@dataclass
class Source:
    """The encoder being exported: its bare export folder and cxrjepa's own model of it."""

    folder: Path
    loaded: LoadedEncoder

    @property
    def is_clip(self) -> bool:
        return self.loaded.config.is_clip

    def input_shape(self, batch: str | int = "batch") -> list:
        """(batch, C, S, S), or (batch, C, T, S, S) for a clip encoder."""
        cfg = self.loaded.config
        return [batch, cfg.in_chans, *cfg.input_shape]


def missing_packages(formats: list[str]) -> list[str]:
    """The modules the formats need that cannot be imported here."""
    return [m for f in formats for m in PACKAGES.get(f, ()) if importlib.util.find_spec(m) is None]


# ------------------------------------------------------------------------------------ graphs


class ImageGraph(nn.Module):
    """[0, 1] images (B, C, S, S) -> (features (B, D), patch tokens (B, L, D)), normalisation inside.

    ``vit.forward_features`` is what ``cxrjepa embed`` runs on a cxrjepa encoder; features are its mean."""

    def __init__(self, vit: nn.Module, mean: float, std: float):
        super().__init__()
        self.vit = vit
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.vit.forward_features((image - self.mean) / self.std)
        return tokens.mean(dim=1), tokens


class ClipGraph(nn.Module):
    """[0, 1] clips (B, C, T, S, S) -> (features, patch tokens on the (T', h, w) grid, time-major)."""

    def __init__(self, encoder: nn.Module, mean: float, std: float):
        super().__init__()
        self.encoder = encoder
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.encoder.tokens((image - self.mean) / self.std)
        return tokens.mean(dim=1), tokens


def graph_for(src: Source) -> nn.Module:
    norm = src.loaded.normalization
    if src.is_clip:
        return ClipGraph(src.loaded.model, norm.mean, norm.std).eval()
    return ImageGraph(src.loaded.model.vit, norm.mean, norm.std).eval()


def _example(batch: CheckBatch) -> torch.Tensor:
    """At least two images: torch.export would fix a batch axis traced at size 1."""
    x = batch.images
    return x if len(x) >= 2 else x.repeat(2, *([1] * (x.ndim - 1)))


def _normalized(src: Source, images: torch.Tensor) -> torch.Tensor:
    norm = src.loaded.normalization
    return (images - norm.mean) / norm.std


def _numpy(features: torch.Tensor, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return features.detach().float().cpu().numpy(), tokens.detach().float().cpu().numpy()


@contextlib.contextmanager
def _quiet():
    """Exporters print progress and deprecation warnings; keep them out of cxrjepa's output."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _graph_io(src: Source) -> dict:
    """Input and output description shared by the ONNX and TorchScript graphs."""
    norm, dim = src.loaded.normalization, src.loaded.config.embed_dim
    return {
        "inputs": {
            INPUT: {
                "shape": src.input_shape(),
                "dtype": "float32",
                "values": f"stored intensity / maximum of its type ({norm.divide_by:g} for this encoder's "
                "training data), i.e. in [0, 1]",
            }
        },
        "outputs": {"features": ["batch", dim], "patch_tokens": ["batch", "tokens", dim]},
        "normalization": {"where": "inside the graph: (image - mean) / std", "mean": norm.mean, "std": norm.std},
    }


# ------------------------------------------------------------------------------------ safetensors


def write_safetensors(src: Source, folder: Path, batch: CheckBatch, opset: int) -> dict:
    for name in (WEIGHTS, CONFIG):
        shutil.copy2(src.folder / name, folder / name)
    meta = src.loaded.meta
    norm = src.loaded.normalization
    return {
        "loads_with": "timm" if meta.get("timm_loadable", True) else "cxrjepa.models.export.load_encoder",
        "timm_model": meta.get("timm_model"),
        "inputs": {
            "x": {"shape": src.input_shape(), "dtype": "float32", "values": "(stored / divide_by - mean) / std"}
        },
        "outputs": {"features": "model(x)", "patch_tokens": "model.forward_features(x)"}
        if not src.is_clip
        else {"features": "enc.model(x)", "patch_tokens": "enc.model.tokens(x)"},
        "normalization": {
            "where": "outside the model (config.json 'normalization')",
            "divide_by": norm.divide_by,
            "mean": norm.mean,
            "std": norm.std,
        },
    }


def run_safetensors(src: Source, folder: Path, batch: CheckBatch, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """The documented snippet: timm.create_model + load_state_dict (clip encoders: load_encoder)."""
    import safetensors.torch
    import timm

    from cxrjepa.models.export import load_encoder

    cfg = json.loads((folder / CONFIG).read_text())
    x = _normalized(src, batch.images[rows])
    with torch.no_grad():
        if not cfg.get("timm_loadable", True):
            model = load_encoder(folder).model
            tokens = model.tokens(x)
            return _numpy(tokens.mean(dim=1), tokens)
        model = timm.create_model(cfg["timm_model"], pretrained=False, **cfg["timm_kwargs"])
        model.load_state_dict(safetensors.torch.load_file(str(folder / WEIGHTS)))
        model.eval()
        return _numpy(model(x), model.forward_features(x))


# ------------------------------------------------------------------------------------ onnx


def write_onnx(src: Source, folder: Path, batch: CheckBatch, opset: int) -> dict:
    import onnx

    graph = graph_for(src)
    weight_bytes = sum(p.numel() * p.element_size() for p in graph.parameters())
    path = folder / ONNX_FILE
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            graph,
            (_example(batch),),
            str(path),
            dynamo=True,
            opset_version=opset,
            verbose=False,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_shapes={INPUT: {0: torch.export.Dim("batch", min=1)}},
            external_data=weight_bytes > ONNX_EXTERNAL_BYTES,
        )
    model = onnx.load(str(path), load_external_data=False)
    written = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {
        "opset": int(written),
        "exporter": f"torch.onnx.export (dynamo), torch {torch.__version__}",
        "dynamic_axes": {INPUT: {0: "batch"}, "features": {0: "batch"}, "patch_tokens": {0: "batch"}},
        **_graph_io(src),
    }


def run_onnx(src: Source, folder: Path, batch: CheckBatch, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(folder / ONNX_FILE), opts, providers=["CPUExecutionProvider"])
    features, tokens = session.run(list(OUTPUTS), {INPUT: batch.images[rows].numpy()})
    return features, tokens


# ------------------------------------------------------------------------------------ torchscript


def write_torchscript(src: Source, folder: Path, batch: CheckBatch, opset: int) -> dict:
    graph = graph_for(src)
    with _quiet(), torch.no_grad():
        if src.is_clip:
            module = torch.jit.trace(graph, (_example(batch),), check_trace=False)
        else:
            module = torch.jit.script(graph)
        torch.jit.save(module, str(folder / TORCHSCRIPT_FILE))
    info = {"method": "trace" if src.is_clip else "script", **_graph_io(src)}
    if not src.is_clip:
        info["inputs"][INPUT]["sizes"] = (
            f"any height and width that are multiples of {src.loaded.config.patch_size} "
            "(positions are interpolated, as in PyTorch); checked at the training size"
        )
    return info


def run_torchscript(src: Source, folder: Path, batch: CheckBatch, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    with _quiet():
        module = torch.jit.load(str(folder / TORCHSCRIPT_FILE), map_location="cpu")
    with torch.no_grad():
        return _numpy(*module(batch.images[rows]))


# ------------------------------------------------------------------------------------ hugging face


@contextlib.contextmanager
def _hf_quiet():
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with _quiet():
            yield
    finally:
        hf_logging.set_verbosity(level)
        if shown:
            hf_logging.enable_progress_bar()


def processor_config(src: Source) -> dict:
    """A ViTImageProcessor that turns stored pixels (B, C, H, W) into this encoder's input, as embed does."""
    cfg, norm = src.loaded.config, src.loaded.normalization
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": cfg.image_size, "width": cfg.image_size},
        "resample": 2,  # bilinear, antialiased (embed's resize)
        "do_rescale": True,
        "rescale_factor": 1.0 / float(norm.divide_by),
        "do_normalize": True,
        "image_mean": [float(norm.mean)] * cfg.in_chans,
        "image_std": [float(norm.std)] * cfg.in_chans,
        "do_convert_rgb": False,
    }


def write_hf(src: Source, folder: Path, batch: CheckBatch, opset: int) -> dict:
    try:
        from transformers import TimmWrapperConfig, TimmWrapperModel
    except ImportError:
        raise UsageError("--format hf needs transformers with TimmWrapperModel (4.47 or later).") from None
    cfg = src.loaded.config
    model_args = {k: v for k, v in cfg.timm_kwargs().items() if k not in ("num_classes", "drop_path_rate")}
    with _hf_quiet():
        model = TimmWrapperModel(TimmWrapperConfig(architecture=cfg.timm_model, model_args=model_args, num_labels=0))
        model.timm_model.load_state_dict(src.loaded.model.vit.state_dict())
        model.save_pretrained(str(folder))
    proc = processor_config(src)
    atomic_write_json(folder / HF_PROCESSOR, proc)
    import transformers

    return {
        "model_class": "TimmWrapperModel",
        "model_type": "timm_wrapper",
        "architecture": cfg.timm_model,
        "image_processor": "ViTImageProcessor",
        "transformers": transformers.__version__,
        "inputs": {
            "pixel_values": {
                "shape": src.input_shape(),
                "dtype": "float32",
                "values": "the image processor's output for stored pixels (B, C, H, W)",
            }
        },
        "outputs": {"features": "pooler_output", "patch_tokens": "last_hidden_state"},
        "normalization": {
            "where": f"the image processor ({HF_PROCESSOR})",
            "rescale_factor": proc["rescale_factor"],
            "mean": src.loaded.normalization.mean,
            "std": src.loaded.normalization.std,
        },
    }


def run_hf(src: Source, folder: Path, batch: CheckBatch, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """AutoModel + AutoImageProcessor from the folder, offline, fed the stored pixels as float32."""
    from transformers import AutoImageProcessor, AutoModel

    with _hf_quiet():
        model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        pixels = processor(batch.stored_images[rows], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels)
    return _numpy(out.pooler_output, out.last_hidden_state)


Writer = Callable[[Source, Path, CheckBatch, int], dict]
Runner = Callable[[Source, Path, CheckBatch, slice], tuple[np.ndarray, np.ndarray]]

#: format -> (writer, runner)
FORMAT_IO: dict[str, tuple[Writer, Runner]] = {
    "safetensors": (write_safetensors, run_safetensors),
    "onnx": (write_onnx, run_onnx),
    "torchscript": (write_torchscript, run_torchscript),
    "hf": (write_hf, run_hf),
}
