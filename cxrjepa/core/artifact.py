"""The artifact contract: a folder with a ``manifest.yaml`` (see docs/artifacts.md).

A stage opens its output with :func:`begin`, which decides whether the work is already done (complete
manifest with the same fingerprint: skip), resumable (partial manifest, same fingerprint), stale (other
fingerprint: refused unless ``overwrite``) or new. The stage then does its work and calls
:meth:`ArtifactBuilder.finish`, which writes the complete manifest last and atomically.

The fingerprint covers the kind, the science parameters, the inputs' fingerprints and the stage's
**algorithm version**: a constant ``ALGORITHM_VERSION`` next to each stage's code, bumped by hand when a
change to the code changes what the stage writes for the same parameters and inputs (a fixed normalisation,
a corrected metric). Old artifacts of that stage then become stale with the reason
:data:`ALGORITHM_CHANGED` (docs/artifacts.md).

Readers use :func:`open_artifact`, which refuses a missing, partial or wrong-kind input with one sentence
that names the stage to run.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cxrjepa.core.atomic import atomic_write_yaml
from cxrjepa.core.config import to_dict
from cxrjepa.core.errors import ArtifactError, UsageError
from cxrjepa.core.fingerprint import fingerprint_path, hash_obj
from cxrjepa.core.lock import check_lock, output_lock
from cxrjepa.core.provenance import producer

T = TypeVar("T")

SCHEMA = "cxrjepa.artifact/1"
MANIFEST = "manifest.yaml"

#: artifact kind -> the command that makes one
STAGE_FOR_KIND = {
    "demo": "cxrjepa demo-data",
    "dataset": "cxrjepa ingest",
    "run": "cxrjepa pretrain",
    "targets": "cxrjepa pretrain --objective salt with runtime.teacher_cache",
    "embeddings": "cxrjepa embed",
    "probe": "cxrjepa probe",
    "report": "cxrjepa report",
    "export": "cxrjepa export",
}
KINDS = tuple(STAGE_FOR_KIND)
COMPLETE = "complete"
PARTIAL = "partial"
#: why an artifact is stale when only the stage's algorithm version differs from the one that made it
ALGORITHM_CHANGED = "the stage's algorithm changed"
PARAMS_CHANGED = "parameters or inputs changed"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def read_manifest(path: str | Path) -> dict | None:
    """The manifest of the artifact folder ``path``, ``None`` if there is none.

    A manifest that cannot be parsed raises :class:`ArtifactError`.
    """
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        return None
    try:
        data = yaml.safe_load(mpath.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ArtifactError(
            f"The manifest of '{path}' is corrupt; rerun the stage that made it with --force."
        ) from None
    if not isinstance(data, dict) or "kind" not in data or "status" not in data:
        raise ArtifactError(f"The manifest of '{path}' is corrupt; rerun the stage that made it with --force.")
    return data


@dataclass
class Artifact:
    """A complete artifact on disk."""

    path: Path
    manifest: dict

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def fingerprint(self) -> str:
        return self.manifest.get("fingerprint", "")

    @property
    def content_fingerprint(self) -> str:
        return self.manifest.get("content_fingerprint") or self.fingerprint

    @property
    def params(self) -> dict:
        return self.manifest.get("params") or {}

    @property
    def counts(self) -> dict:
        return self.manifest.get("counts") or {}

    @property
    def contents(self) -> dict:
        return self.manifest.get("contents") or {}

    @property
    def algorithm_version(self) -> int | None:
        """The algorithm version of the stage that made it (``None`` for artifacts older than the field)."""
        return self.manifest.get("algorithm_version")

    def contents_as(self, cls: type[T]) -> T:
        """The manifest's ``contents`` checked against the kind's schema (a dataclass of its layout module)."""
        return self._part_as("contents", cls)

    def counts_as(self, cls: type[T]) -> T:
        """The manifest's ``counts`` checked against the kind's schema."""
        return self._part_as("counts", cls)

    def _part_as(self, part: str, cls: type[T]) -> T:
        from cxrjepa.core.schema import parse

        return parse(
            cls,
            self.manifest.get(part) or {},
            what=f"the {self.kind} '{self.path}' ({MANIFEST} {part})",
            rerun=STAGE_FOR_KIND.get(self.kind),
        )

    def input_ref(self, name: str) -> dict:
        """How a downstream artifact records this one as its input."""
        return {"name": name, "path": str(self.path), "kind": self.kind, "fingerprint": self.content_fingerprint}


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


def open_artifact(path: str | Path, kind: str | Sequence[str], *, what: str | None = None) -> Artifact:
    """Open a complete artifact of ``kind`` or raise one clear sentence saying what to run first."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    want = " or ".join(f"{_article(k)} {k}" for k in kinds)
    make = " or ".join(f"'{STAGE_FOR_KIND[k]}'" for k in kinds if k in STAGE_FOR_KIND)
    label = what or kinds[0]
    if not path.exists():
        raise ArtifactError(f"The {label} '{path}' does not exist; run {make} first.")
    manifest = read_manifest(path)
    if manifest is None:
        raise ArtifactError(f"'{path}' is not {want} artifact (it has no {MANIFEST}); run {make} first.")
    if manifest.get("kind") not in kinds:
        raise ArtifactError(
            f"'{path}' is {_article(manifest.get('kind', 'x'))} {manifest.get('kind')} artifact, not {want}."
        )
    if manifest.get("status") != COMPLETE:
        raise ArtifactError(
            f"The {label} '{path}' is incomplete (status {manifest.get('status')}); rerun {make} to finish it."
        )
    return Artifact(path=path, manifest=manifest)


def compute_fingerprint(kind: str, params: Any, inputs: Sequence[Mapping[str, Any]], version: int | None = 1) -> str:
    """What makes an artifact stale: its kind, its science parameters, its inputs' fingerprints and the
    stage's algorithm ``version`` (``None``: the fingerprint of artifacts made before versions were recorded)."""
    data = {
        "schema": SCHEMA,
        "kind": kind,
        "params": to_dict(params),
        "inputs": sorted((str(i.get("name")), str(i.get("fingerprint"))) for i in inputs),
    }
    if version is not None:
        data["algorithm_version"] = int(version)
    return hash_obj(data)


def raw_input_ref(name: str, path: str | Path) -> dict:
    """An input that is not an artifact (a folder of DICOMs, a labels CSV)."""
    return {"name": name, "path": str(path), "kind": "raw", "fingerprint": fingerprint_path(path)}


def input_ref(name: str, path: str | Path) -> dict:
    """An input reference for ``path``: its content fingerprint if it is an artifact, else a raw one."""
    manifest = read_manifest(path) if Path(path).is_dir() else None
    if manifest and manifest.get("status") == COMPLETE:
        return Artifact(Path(path), manifest).input_ref(name)
    return raw_input_ref(name, path)


@dataclass
class Plan:
    """What :func:`plan_artifact` decided about an output folder."""

    action: str  # "skip" | "resume" | "create" | "overwrite" | "refuse"
    reason: str
    fingerprint: str
    existing: dict | None = None


def stale_reason(
    manifest: Mapping[str, Any], kind: str, params: Any, inputs: Sequence[Mapping[str, Any]], version: int
) -> str:
    """Why an artifact whose fingerprint differs is stale: :data:`ALGORITHM_CHANGED` when its parameters and
    inputs are those of now and only the stage's algorithm version differs, else :data:`PARAMS_CHANGED`."""
    old = manifest.get("algorithm_version")
    if old is not None and (not isinstance(old, int) or isinstance(old, bool)):
        return PARAMS_CHANGED  # a hand-edited manifest: nothing to compare with
    if old != version and compute_fingerprint(kind, params, inputs, old) == manifest.get("fingerprint"):
        return f"{ALGORITHM_CHANGED} (version {old if old is not None else 'unrecorded'} -> {version})"
    return PARAMS_CHANGED


def plan_artifact(
    out: str | Path,
    kind: str,
    params: Any,
    inputs: Sequence[Mapping[str, Any]],
    *,
    force: bool = False,
    version: int = 1,
) -> Plan:
    """Skip, resume, create, overwrite or refuse the output ``out`` of a stage at algorithm ``version``."""
    out = Path(out)
    fp = compute_fingerprint(kind, params, inputs, version)
    manifest = read_manifest(out) if out.is_dir() else None
    if force:
        return Plan("overwrite" if out.exists() else "create", "forced", fp, manifest)
    if manifest is None:
        if out.exists() and any(out.iterdir()):
            return Plan("refuse", f"'{out}' is a non-empty folder that is not a cxrjepa artifact", fp)
        return Plan("create", "no artifact yet", fp)
    if manifest.get("kind") != kind:
        return Plan(
            "refuse",
            f"'{out}' holds {_article(manifest.get('kind', 'x'))} {manifest.get('kind')} artifact",
            fp,
            manifest,
        )
    if manifest.get("fingerprint") != fp:
        return Plan("overwrite", stale_reason(manifest, kind, params, inputs, version), fp, manifest)
    if manifest.get("status") == COMPLETE:
        return Plan("skip", "up to date (same fingerprint)", fp, manifest)
    return Plan("resume", "an interrupted run with the same fingerprint", fp, manifest)


def clear_artifact(out: Path) -> None:
    """Remove an artifact folder's contents; refuses folders that are not artifacts.

    Holds the folder's lock (cxrjepa.core.lock) meanwhile; the lock file lives next to the folder, so
    clearing never removes it."""
    if not out.exists():
        return
    with output_lock(out, "clear"):
        if read_manifest(out) is None and any(out.iterdir()):
            raise UsageError(f"Refusing to delete '{out}': it is not a cxrjepa artifact.")
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


@dataclass
class ArtifactBuilder:
    """An artifact being made. Created by :func:`begin`; ``finish`` writes the complete manifest."""

    path: Path
    kind: str
    params: dict
    inputs: list[dict]
    fingerprint: str
    action: str
    algorithm_version: int = 1
    options: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    contents: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    created: str = field(default_factory=_now)
    existing: dict | None = None

    @property
    def skipped(self) -> bool:
        return self.action == "skip"

    @property
    def resumed(self) -> bool:
        return self.action == "resume"

    def manifest(self, status: str, content_fingerprint: str | None = None) -> dict:
        return {
            "schema": SCHEMA,
            "kind": self.kind,
            "status": status,
            "created": self.created,
            "finished": _now() if status == COMPLETE else None,
            "duration_s": round(time.time() - self.started, 3),
            "fingerprint": self.fingerprint,
            "algorithm_version": self.algorithm_version,
            "content_fingerprint": content_fingerprint,
            "producer": producer(),
            "params": self.params,
            "options": self.options,
            "inputs": self.inputs,
            "counts": self.counts,
            "contents": self.contents,
            "notes": self.notes,
        }

    def write_partial(self) -> None:
        atomic_write_yaml(self.path / MANIFEST, self.manifest(PARTIAL))

    def finish(self, content_fingerprint: str | None = None) -> Artifact:
        """Write the complete manifest (last, atomically) and return the finished artifact."""
        if content_fingerprint is None:
            content_fingerprint = hash_obj(
                {"fingerprint": self.fingerprint, "counts": self.counts, "contents": self.contents}
            )
        manifest = self.manifest(COMPLETE, content_fingerprint)
        check_lock(self.path)  # a lock lost meanwhile means another writer may have been here
        atomic_write_yaml(self.path / MANIFEST, manifest)
        return Artifact(self.path, manifest)

    def existing_artifact(self) -> Artifact:
        assert self.existing is not None
        return Artifact(self.path, self.existing)


def begin(
    out: str | Path,
    kind: str,
    params: Any,
    inputs: Sequence[Mapping[str, Any]] = (),
    *,
    options: Mapping[str, Any] | None = None,
    force: bool = False,
    overwrite: bool = True,
    dry_run: bool = False,
    version: int = 1,
) -> ArtifactBuilder:
    """Start (or resume, or skip) making the artifact ``out``.

    ``params`` are the science settings (they enter the fingerprint); ``options`` are operational
    (workers, devices) and do not; ``version`` is the stage's ``ALGORITHM_VERSION`` (enters the fingerprint
    and the manifest). With ``overwrite=False`` a stale artifact is an error instead of being replaced.
    With ``dry_run`` nothing is written and no lock is taken. Check ``builder.skipped`` before doing any work.

    The folder's lock (cxrjepa.core.lock) is taken before the folder is read to plan, and held while it is
    cleared and the partial manifest written. A stage holds it for its whole run (``locks_output``); a
    caller that does not hold it gets it for the duration of this call only.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    out = Path(out)
    if dry_run:
        return _begin(out, kind, params, inputs, options, force, overwrite, dry_run, version)
    with output_lock(out, STAGE_FOR_KIND[kind].split()[1]):
        return _begin(out, kind, params, inputs, options, force, overwrite, dry_run, version)


def _begin(
    out: Path,
    kind: str,
    params: Any,
    inputs: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any] | None,
    force: bool,
    overwrite: bool,
    dry_run: bool,
    version: int,
) -> ArtifactBuilder:
    params_d = to_dict(params)
    plan = plan_artifact(out, kind, params_d, inputs, force=force, version=version)
    if plan.action == "refuse":
        raise UsageError(f"{plan.reason}; choose another --out or pass --force.")
    if plan.action == "overwrite" and not force and not overwrite:
        raise UsageError(
            f"'{out}' holds a {kind} made with other settings, inputs or algorithm ({plan.reason}); "
            "pass --force to replace it."
        )
    builder = ArtifactBuilder(
        path=out,
        kind=kind,
        params=params_d,
        inputs=[dict(i) for i in inputs],
        fingerprint=plan.fingerprint,
        action=plan.action,
        algorithm_version=version,
        options=to_dict(dict(options or {})),
        existing=plan.existing,
    )
    if dry_run or plan.action == "skip":
        return builder
    if plan.action == "overwrite":
        clear_artifact(out)
    out.mkdir(parents=True, exist_ok=True)
    if plan.action != "resume":
        builder.write_partial()
    else:
        prev = plan.existing or {}
        builder.created = prev.get("created", builder.created)
    return builder


def input_refs(inputs: Mapping[str, Any]) -> list[dict]:
    """Input references for a stage's named inputs: ``{name: path | [paths] | None}``.

    Lists become ``name[0]``, ``name[1]``...; ``None`` is skipped. Stages and the pipeline runner both
    use this, so a dry run computes the same fingerprint the stage will.
    """
    refs: list[dict] = []
    for name, value in inputs.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            refs.extend(input_ref(f"{name}[{i}]", p) for i, p in enumerate(value))
        else:
            refs.append(input_ref(name, value))
    return refs
