"""``cxrjepa export`` as a Python function: one encoder, several formats, each checked before it counts.

    from cxrjepa.export.api import ExportConfig, run_export
    art = run_export("EXPORT", ExportConfig(formats=["onnx", "hf"]), encoder="RUN")

The encoder is a run artifact, a bare export folder (``RUN/encoder``) or an earlier export artifact. Each
format is written into a staging folder, run on the fixed check batch (:mod:`cxrjepa.export.check`) at the
batch's size and at batch size 1, and compared with the PyTorch encoder as ``cxrjepa embed`` runs it; only a
format within its tolerance is moved to ``OUT/<format>/``. One above tolerance ends the export with one
sentence (exit 1) and leaves the artifact partial: nothing half-written is presented as complete.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from cxrjepa.core import console
from cxrjepa.core.artifact import Artifact, begin, input_refs, open_artifact, read_manifest
from cxrjepa.core.config import from_dict, to_dict
from cxrjepa.core.errors import ArtifactError, CxrjepaError, UsageError
from cxrjepa.core.fingerprint import hash_file, hash_obj
from cxrjepa.encoders import cxrjepa_encoder_ref, load_feature_encoder
from cxrjepa.export.check import CheckBatch, make_check_batch, max_abs_diff
from cxrjepa.export.config import FORMATS, ExportConfig, Tolerance
from cxrjepa.export.formats import FORMAT_IO, Source, missing_packages
from cxrjepa.models.export import CONFIG, WEIGHTS, find_export, load_encoder
from cxrjepa.models.vit import EncoderConfig

__all__ = ["ExportConfig", "Tolerance", "run_export", "export_input_refs"]

KIND = "export"
#: bump when a change to this stage's code changes what it writes for the same settings and inputs
#: (docs/artifacts.md, "Algorithm versions")
ALGORITHM_VERSION = 1
STAGING = ".staging-"


def _manifest(path: Path) -> dict | None:
    return read_manifest(path) if path.is_dir() else None


def _encoder_folder(encoder: Path) -> tuple[Path, Artifact | None]:
    """The bare export folder to read, and the artifact (run or export) it belongs to, if any."""
    if _manifest(encoder) is None:
        return find_export(encoder), None
    art = open_artifact(encoder, ("run", "export"), what="encoder")
    folder = encoder / ("encoder" if art.kind == "run" else "safetensors")
    if not (folder / WEIGHTS).is_file():
        raise ArtifactError(
            f"'{encoder}' holds no encoder weights ({folder.name}/{WEIGHTS}); "
            + (
                "export it again with --format safetensors."
                if art.kind == KIND
                else "rerun 'cxrjepa pretrain' to finish it."
            )
        )
    return folder, art


def export_input_refs(encoder: str | Path, data: str | Path | None = None) -> list[dict]:
    """The inputs of an export, as its fingerprint sees them (the pipeline runner uses this too): a run or an
    export artifact by its content fingerprint, a bare export folder by its weights' sha256; the dataset."""
    path = Path(encoder)
    manifest = _manifest(path)
    if manifest is not None and manifest.get("kind") == KIND:
        ref = open_artifact(path, KIND, what="encoder").input_ref("encoder")
    else:
        ref = cxrjepa_encoder_ref("encoder", path)
    return [ref] + input_refs({"data": data})


def _check_data(data: str | Path | None, art: Artifact | None, notes: list[str]) -> Path | None:
    """The dataset of the check batch: ``data``, else the run's own (an export artifact's check dataset)."""
    if data is not None:
        return Path(data)
    if art is None:
        return None
    if art.kind == "run":
        found = [i for i in art.manifest.get("inputs") or [] if i.get("kind") == "dataset"]
        found.sort(key=lambda i: i.get("name") != "data")
        path = found[0]["path"] if found else None
    else:
        check = art.contents.get("check") or {}
        path = check.get("path") if check.get("kind") == "dataset" else None
    if path is None:
        return None
    manifest = _manifest(Path(path))
    if manifest is None or manifest.get("status") != "complete":
        note = (
            f"The encoder's dataset '{path}' is not readable here; checking on synthetic images "
            "(pass --data to use a dataset)."
        )
        console.warn(note)
        notes.append(note)
        return None
    return Path(path)


def _formats(config: ExportConfig, encoder: EncoderConfig, notes: list[str]) -> list[str]:
    formats = config.wanted()
    if encoder.is_clip and "hf" in formats:
        if config.formats is not None:
            raise UsageError(
                "A clip (tubelet) encoder cannot be a Hugging Face folder: no stock transformers class "
                "builds its 3-D tubelet embedding; export it as safetensors, onnx or torchscript."
            )
        formats.remove("hf")
        notes.append("hf was not written: no stock transformers class builds a clip encoder's tubelet embedding.")
    missing = missing_packages(formats)
    if missing:
        raise UsageError(
            f"Exporting to {', '.join(formats)} needs the packages {', '.join(sorted(set(missing)))}: "
            "pip install 'cxrjepa[export]'."
        )
    return formats


def _clear(out: Path) -> None:
    """Remove format folders of an interrupted or replaced export (the manifest stays)."""
    for child in out.iterdir():
        if child.is_dir() and (child.name in FORMATS or child.name.startswith(STAGING)):
            shutil.rmtree(child)


def _export_one(fmt: str, src: Source, out: Path, batch: CheckBatch, config: ExportConfig) -> dict:
    """Write ``fmt`` into a staging folder, check it, and move it to ``out/fmt`` when within tolerance."""
    write, run = FORMAT_IO[fmt]
    stage = out / f"{STAGING}{fmt}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    tolerance = float(getattr(config.tolerance, fmt))
    try:
        t0 = time.perf_counter()
        step = "Writing"
        try:
            info = write(src, stage, batch, config.onnx_opset)
            written_s = time.perf_counter() - t0
            step = "Checking"
            sizes = sorted({len(batch), 1}, reverse=True)  # the whole batch, then a single image
            diff = max(max_abs_diff(batch, *run(src, stage, batch, slice(0, n)), slice(0, n)) for n in sizes)
        except CxrjepaError:
            raise
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            raise CxrjepaError(f"{step} the {fmt} export failed ({type(exc).__name__}: {first}).") from exc
        if not diff <= tolerance:
            raise CxrjepaError(
                f"The {fmt} export differs from the PyTorch encoder by {diff:.3g} (largest absolute difference on the "
                f"check batch), above its tolerance {tolerance:g}; it was not written (set tolerance.{fmt} to accept it)."
            )
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    dest = out / fmt
    shutil.rmtree(dest, ignore_errors=True)
    stage.rename(dest)
    files = {
        str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": hash_file(p)}
        for p in sorted(dest.rglob("*"))
        if p.is_file()
    }
    console.info(
        f"export: {fmt} written and checked (max abs diff {diff:.3g} <= {tolerance:g}) in "
        f"{time.perf_counter() - t0:.1f} s."
    )
    return {
        "files": files,
        "bytes": sum(f["bytes"] for f in files.values()),
        "tolerance": tolerance,
        "max_abs_diff": diff,
        "checked_batch_sizes": sizes,
        "write_s": round(written_s, 2),
        "total_s": round(time.perf_counter() - t0, 2),
        **info,
    }


def _encoder_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"The encoder config '{folder / CONFIG}' is missing or corrupt.") from None


def run_export(
    out: str | Path,
    config: ExportConfig | None = None,
    *,
    encoder: str | Path,
    data: str | Path | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> Artifact | dict:
    """Export ``encoder`` (a run, an export folder or an export artifact) into the export artifact ``out``.

    ``data`` (a dataset artifact) overrides the dataset the check batch comes from (default: the run's own).
    Returns the complete artifact, or a plan dict with ``dry_run``.
    """
    config = config or ExportConfig()
    config.validate()
    out = Path(out)
    encoder = Path(encoder)
    folder, art = _encoder_folder(encoder)
    meta = _encoder_meta(folder)
    enc_cfg = from_dict(EncoderConfig, meta.get("encoder") or {})
    notes: list[str] = []
    formats = _formats(config, enc_cfg, notes)
    refs = export_input_refs(encoder, data)
    builder = begin(out, KIND, config, refs, force=force, dry_run=dry_run, version=ALGORITHM_VERSION)
    if builder.skipped:
        console.info(f"Export '{out}' is up to date.")
        return builder.existing_artifact()
    if dry_run:
        console.info(f"Would export '{encoder}' as {', '.join(formats)} into '{out}' ({builder.action}).")
        return {
            "dry_run": True,
            "out": str(out),
            "action": builder.action,
            "fingerprint": builder.fingerprint,
            "encoder": str(encoder),
            "formats": formats,
        }
    _clear(out)
    src = Source(folder, load_encoder(folder))
    reference = load_feature_encoder(str(folder))  # the encoder exactly as `cxrjepa embed --encoder` loads it
    check_data = _check_data(data, art, notes)
    batch = make_check_batch(
        reference, check_data, config.check_samples, config.seed, src.loaded.normalization.divide_by
    )
    if batch.source["kind"] == "synthetic":
        notes.append(batch.source["note"])
    cfg = src.loaded.config
    builder.notes = notes
    builder.contents.update(
        {
            "encoder": {
                "path": str(encoder.resolve()),
                "fingerprint": src.loaded.fingerprint,
                "timm_model": cfg.timm_model,
                "encoder": to_dict(cfg),
                "embed_dim": cfg.embed_dim,
                "patch_size": cfg.patch_size,
                "image_size": cfg.image_size,
                "in_chans": cfg.in_chans,
                "clip": cfg.is_clip,
                "normalization": to_dict(src.loaded.normalization),
            },
            "check": batch.source,
            "formats": {},
        }
    )
    builder.write_partial()
    console.info(
        f"Exporting '{encoder}' ({cfg.timm_model}, {cfg.image_size} px) as {', '.join(formats)}; checking on "
        f"{len(batch)} {'dataset' if batch.source['kind'] == 'dataset' else 'synthetic'} "
        f"{'clips' if cfg.is_clip else 'images'}."
    )
    for fmt in formats:
        builder.contents["formats"][fmt] = _export_one(fmt, src, out, batch, config)
        builder.write_partial()
    builder.counts.update({"formats": len(formats)})
    files = {k: v["sha256"] for f in builder.contents["formats"].values() for k, v in f["files"].items()}
    art_out = builder.finish(hash_obj({"fingerprint": builder.fingerprint, "files": files}))
    console.info(f"Wrote {len(formats)} checked format(s) to '{out}'.")
    return art_out
