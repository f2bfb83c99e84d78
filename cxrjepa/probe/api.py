"""``cxrjepa probe`` as a Python function: how good are an encoder's embeddings for labelled tasks?

    from cxrjepa.probe.api import ProbeConfig, run_probe
    art = run_probe("PROBE", ProbeConfig(tasks=["finding"]), embeddings="EMB")
    metrics = json.loads((art.path / "metrics.json").read_text())

Per task: a patient-level split (saved, reused), linear and kNN probes chosen on validation and scored on
test with patient-bootstrap 95 % intervals, few-shot curves, subgroup metrics and gaps; plus sex/age
prediction and, with corruptions, robustness of the clean-trained linear probe. Schema: docs/probe.md; file
names and the schema the report reads with: :mod:`cxrjepa.probe.layout` (what is written is checked against it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrjepa.core import console
from cxrjepa.core.artifact import MANIFEST, Artifact, begin, input_refs, read_manifest
from cxrjepa.core.atomic import atomic_write_json, atomic_write_yaml
from cxrjepa.core.config import to_dict
from cxrjepa.core.errors import UsageError
from cxrjepa.core.fingerprint import hash_obj
from cxrjepa.core.lock import locks_output
from cxrjepa.core.phi import is_identifying
from cxrjepa.core.schema import check_written
from cxrjepa.embed.store import Embeddings
from cxrjepa.probe import metrics
from cxrjepa.probe.attributes import predict_attributes
from cxrjepa.probe.config import ProbeConfig, ProbeOptions
from cxrjepa.probe.corruptions import check as check_corruptions
from cxrjepa.probe.fewshot import run_fewshot
from cxrjepa.probe.knn import fit_knn
from cxrjepa.probe.layout import (
    KIND,
    METRICS_JSON,
    METRICS_YAML,
    PREDICTION_COLUMNS,
    PREDICTIONS,
    SIDES,
    SPLIT,
    ProbeContents,
    ProbeMetrics,
)
from cxrjepa.probe.layout import Probe as ProbeArtifact
from cxrjepa.probe.linear import Probe, fit_linear
from cxrjepa.probe.splits import make_split, patient_keys, read_split, write_split
from cxrjepa.probe.subgroups import attribute_columns, evaluate_subgroups
from cxrjepa.probe.tasks import Task, join_labels, make_task
from cxrjepa.tracking import RunInfo, TrackerSet, parse_loggers, read_state
from cxrjepa.tracking.base import input_tags, probe_metrics

__all__ = ["ProbeConfig", "ProbeOptions", "run_probe", "build_tasks", "METRICS_JSON"]

#: bump when a change to the probe stage's code changes its results for the same settings and inputs
#: (docs/artifacts.md, "Algorithm versions")
ALGORITHM_VERSION = 1


def build_tasks(config: ProbeConfig, emb: Embeddings, labels: str | Path | None) -> tuple[list[Task], dict]:
    """The tasks to probe, with labels aligned to the embeddings rows."""
    index = emb.index
    join_info: dict = {}
    refuse_identifying(config.tasks, "probe")
    if labels is not None:
        table, join_info = join_labels(index, labels, config.key, config.tasks or None)
        names = list(config.tasks or table.columns)
        if join_info["matched_samples"] == 0:
            raise UsageError(f"No row of the labels file matched the embeddings on '{config.key}'; check --key.")
    else:
        names = list(config.tasks) or [c for c in emb.label_columns if not is_identifying(c)]
        if not names:
            raise UsageError(
                "The embeddings carry no label columns; pass --labels CSV (with --key) or --label-col COLUMN."
            )
        missing = [n for n in names if n not in index.columns]
        if missing:
            raise UsageError(
                f"The embeddings index has no column '{missing[0]}' (label columns: {', '.join(emb.label_columns) or 'none'})."
            )
        table = index
    tasks = []
    for name in names:
        ttype = config.task_types.get(name)
        tasks.append(make_task(table[name].rename(name), name, ttype, config.positive.get(name), config.multilabel_sep))
    return tasks, join_info


def refuse_identifying(columns, what: str) -> None:
    """A usage error when a column asked for by name is identifying (core.phi): its values would be written."""
    bad = [c for c in columns if is_identifying(c)]
    if bad:
        raise UsageError(
            f"The column '{bad[0]}' holds identifying values (names, IDs, dates, contact details or "
            f"free text); cxrjepa does not {what} it."
        )


def _previous_split(out: Path, split: str | Path | None) -> pd.DataFrame | None:
    if split is not None:
        return read_split(split)
    prev = out / SPLIT
    if prev.is_file() and (read_manifest(out) or {}).get("kind") == KIND:
        return read_split(prev)
    return None


def _scores_frame(
    task: Task, probe_kind: str, rows: np.ndarray, index: pd.DataFrame, split: np.ndarray, scores: np.ndarray
) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "sample_id": index["sample_id"].astype(str).to_numpy()[rows],
            "task": task.name,
            "probe": probe_kind,
            "split": split[rows],
            "target": task.target_text(rows),
            "prediction": task.prediction_text(scores),
        }
    )
    if task.type == "regression":
        df["target_value"] = task.y[rows].astype(np.float64)
        df["prediction_value"] = scores.astype(np.float64)
    else:
        for c, name in enumerate(task.classes):
            df[f"score_{name}"] = scores[:, c].astype(np.float64)
    return df


def _fit(kind: str, task: Task, X, y, tr, va, config: ProbeConfig) -> Probe:
    if kind == "linear":
        return fit_linear(
            task, X[tr], y[tr], X[va], y[va], c_grid=config.c_grid, alpha_grid=config.alpha_grid, seed=config.seed
        )
    return fit_knn(task, X[tr], y[tr], X[va], y[va], ks=config.knn_k)


def _usable(task: Task, sides: dict[str, np.ndarray]) -> str | None:
    """Why a task cannot be probed with this split, or ``None``."""
    if len(sides["train"]) < 2 or len(sides["test"]) < 1:
        return f"too few labelled samples (train {len(sides['train'])}, test {len(sides['test'])})"
    if task.type in ("binary", "multiclass") and len(np.unique(task.y[sides["train"]])) < 2:
        return "a single class in the training split"
    return None


@locks_output("probe")
def run_probe(
    out: str | Path,
    config: ProbeConfig | None = None,
    *,
    embeddings: str | Path,
    labels: str | Path | None = None,
    split: str | Path | None = None,
    options: ProbeOptions | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> Artifact | dict:
    config = config or ProbeConfig()
    options = options or ProbeOptions()
    out = Path(out)
    check_corruptions(config.corruptions)
    refuse_identifying(config.subgroups, "group metrics by")
    loggers = parse_loggers(options.loggers)
    emb = Embeddings.open(embeddings)
    refs = input_refs({"embeddings": embeddings, "labels": labels, "split": split})
    previous = _previous_split(out, split)
    builder = begin(
        out, KIND, config, refs, options=to_dict(options), force=force, dry_run=dry_run, version=ALGORITHM_VERSION
    )
    if builder.skipped:
        console.info(f"Probe '{out}' is up to date.")
        artifact = builder.existing_artifact()
        if not dry_run:
            log_probe(artifact, config, emb, loggers)
        return artifact
    seg = config.segmentation.enabled
    # with --task segmentation, label tasks run only when asked for (--label-col or --labels)
    tasks, join_info = build_tasks(config, emb, labels) if (not seg or config.tasks or labels is not None) else ([], {})
    if dry_run:
        console.info(
            f"Would probe {len(tasks)} task(s){' and segmentation' if seg else ''} on '{embeddings}' into '{out}' ({builder.action})."
        )
        return {
            "dry_run": True,
            "out": str(out),
            "action": builder.action,
            "fingerprint": builder.fingerprint,
            "tasks": {t.name: t.type for t in tasks},
            "segmentation": seg,
        }

    _check_memory(emb, config, options, bool(tasks))
    X = emb.array(config.features) if tasks else np.zeros((len(emb.index), 0), np.float32)
    if not np.isfinite(X).all():
        raise UsageError(
            f"The embeddings' {config.features} hold non-finite values; re-run 'cxrjepa embed' (the encoder may have diverged)."
        )
    # small problems: BLAS threads only add overhead (6x slower fits on a busy 2-core machine)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1 if X.size < 5_000_000 else None):
        artifact = _probe(out, builder, config, options, emb, embeddings, X, tasks, join_info, previous)
    log_probe(artifact, config, emb, loggers)
    return artifact


def log_probe(artifact: Artifact, config: ProbeConfig, emb: Embeddings, loggers: list[str]) -> None:
    """Log a complete probe to the trackers ``loggers`` that do not hold its metrics yet (docs/tracking.md):
    its metrics (``probe/<task>/<probe>/<metric>`` with ``ci_low`` / ``ci_high``), its config as params, its
    manifest and metrics.json as files, the fingerprints as tags."""
    state = read_state(artifact.path)
    new = [name for name in loggers if state.get(name, {}).get("last_step") is None]
    if not new:
        return
    tags = {
        "cxrjepa.kind": KIND,
        "cxrjepa.fingerprint": artifact.fingerprint,
        "cxrjepa.artifact": str(artifact.path),
        "cxrjepa.encoder_fingerprint": str(emb.encoder.get("fingerprint")),
        **input_tags(artifact.manifest.get("inputs") or []),
    }
    data = next((r for r in emb.artifact.manifest.get("inputs") or [] if r.get("name") == "data"), None)
    if data is not None:
        tags["cxrjepa.dataset_fingerprint"] = str(data.get("fingerprint"))
    trackers = TrackerSet.open(new, RunInfo("probe", artifact.path, to_dict(config), tags))
    trackers.log(probe_metrics(ProbeArtifact(artifact).metrics), step=0)
    files = {MANIFEST: artifact.path / MANIFEST, METRICS_JSON: artifact.path / METRICS_JSON}
    trackers.finish(files, {"cxrjepa.content_fingerprint": artifact.content_fingerprint})


def _check_memory(emb: Embeddings, config: ProbeConfig, options: ProbeOptions, has_tasks: bool) -> None:
    """Refuse, before loading them, features that cannot be held in memory (cxrjepa.core.memory)."""
    from cxrjepa.core.memory import check_probe_memory
    from cxrjepa.embed.extract import PATCH

    arrays = emb.artifact.contents.get("arrays") or {}
    shape = (arrays.get(config.features) or {}).get("shape") or [len(emb.index), 0]
    patch = arrays.get(PATCH) if config.segmentation.enabled and config.segmentation.source != "encoder" else None
    check_probe_memory(
        rows=int(shape[0]),
        values_per_row=int(np.prod(shape[1:])) if has_tasks else 0,
        patch_values_per_row=int(np.prod(patch["shape"][1:])) if patch else 0,
        features=config.features,
        enabled=options.memory_check,
    )


def _probe(out, builder, config, options, emb, embeddings, X, tasks, join_info, previous) -> Artifact:
    index = emb.index
    patients = patient_keys(index)
    strata = next((t.strata() for t in tasks if t.strata() is not None), None)
    split_arr, split_info = make_split(index, strata, tuple(config.split_fractions), config.seed, previous)
    write_split(out / SPLIT, index, split_arr)
    console.info(
        f"Split (patients): train {split_info['patients']['train']}, val {split_info['patients']['val']}, "
        f"test {split_info['patients']['test']} ({split_info['source']})."
    )

    enc = emb.encoder
    result: dict = {
        "encoder": {"path": enc.get("load") or enc.get("spec"), "fingerprint": enc.get("fingerprint")},
        "embeddings": {
            "path": str(Path(embeddings)),
            "fingerprint": emb.artifact.content_fingerprint,
            "features": config.features,
        },
        "bootstrap": {
            "resamples": config.bootstrap,
            "unit": "patient",
            "interval": "percentile 95%",
            "seed": config.seed,
        },
        "tasks": {},
    }
    preds: list[pd.DataFrame] = []
    linear_probes: dict[str, tuple[Task, Probe, np.ndarray]] = {}
    sub_cols = attribute_columns(index, config.subgroups, config.age_bands) if config.subgroups else {}
    for task in tasks:
        sides = {s: np.flatnonzero(task.mask & (split_arr == s)) for s in SIDES}
        why = _usable(task, sides)
        if why:
            console.warn(f"Skipping task '{task.name}': {why}.")
            builder.notes.append(f"task {task.name} skipped: {why}")
            continue
        tr, va, te = sides["train"], sides["val"], sides["test"]
        y = task.y
        entry: dict = {"type": task.type}
        if task.is_classification:
            entry["classes"] = list(task.classes)
            if task.positive is not None:
                entry["positive"] = task.positive
        entry["n"] = {s: int(len(v)) for s, v in sides.items()}
        entry["probes"] = {}
        labelled = np.flatnonzero(task.mask)
        for kind in config.probes:
            probe = _fit(kind, task, X, y, tr, va, config)
            s_te = probe.scores(X[te])
            ev = metrics.evaluate(
                task.type, y[te], s_te, patients[te], task.classes or None, n_boot=config.bootstrap, seed=config.seed
            )
            res = {"params": probe.params, **ev}
            cur = metrics.curves(task.type, y[te], s_te, task.classes)
            if cur:
                res["curves"] = cur
            entry["probes"][kind] = res
            preds.append(_scores_frame(task, kind, labelled, index, split_arr, probe.scores(X[labelled])))
            if kind == "linear":
                linear_probes[task.name] = (task, probe, te)
        main = "linear" if "linear" in entry["probes"] else config.probes[0]
        if config.fewshot and "linear" in config.probes:
            entry["fewshot"] = {
                "linear": run_fewshot(
                    task,
                    X[tr],
                    y[tr],
                    X[va],
                    y[va],
                    X[te],
                    y[te],
                    fractions=[p / 100.0 for p in config.fewshot],
                    seeds=config.fewshot_seeds,
                    c_grid=config.c_grid,
                    alpha_grid=config.alpha_grid,
                    seed=config.seed,
                )
            }
        if sub_cols:
            main_probe = linear_probes[task.name][1] if main == "linear" else _fit(main, task, X, y, tr, va, config)
            cols = {k: v.iloc[te].reset_index(drop=True) for k, v in sub_cols.items()}
            sg = evaluate_subgroups(
                task.type,
                y[te],
                main_probe.scores(X[te]),
                patients[te],
                cols,
                min_n=config.min_group,
                n_boot=config.bootstrap,
                seed=config.seed,
            )
            if sg:
                entry["subgroups"] = sg
        result["tasks"][task.name] = entry
        _summarize(task, entry)

    if config.segmentation.enabled:
        from cxrjepa.probe.segmentation import run_segmentation

        result["segmentation"] = run_segmentation(out, emb, index, split_arr, patients, config, options)
    elif not result["tasks"]:
        raise UsageError("No task could be probed (see the warnings above); check the labels and the split.")
    if config.attributes and X.shape[1]:
        attrs = predict_attributes(
            X,
            index,
            split_arr,
            patients,
            c_grid=config.c_grid,
            alpha_grid=config.alpha_grid,
            n_boot=config.bootstrap,
            seed=config.seed,
        )
        if attrs:
            result["attributes"] = attrs
    if config.corruptions and linear_probes:
        _robustness(result, emb, linear_probes, patients, config.corruptions, config, options)

    check_written(ProbeMetrics, result, what=METRICS_JSON)
    atomic_write_json(out / METRICS_JSON, result)
    atomic_write_yaml(out / METRICS_YAML, json.loads(json.dumps(result)))
    pred_df = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    tmp = out / f".{PREDICTIONS}.tmp"
    pred_df.to_parquet(tmp, index=False)
    tmp.replace(out / PREDICTIONS)
    builder.counts.update(
        {
            "samples": int(len(index)),
            "tasks": len(result["tasks"]),
            "rejected": 0,
            **{s: int(split_info["counts"][s]) for s in SIDES},
        }
    )
    if "segmentation" in result:
        seg_part = result["segmentation"]
        builder.counts["segmentation_images"] = int(sum(seg_part["n"].values()))
        builder.contents["segmentation"] = {
            "per_image": seg_part["per_image"],
            "predictions": seg_part["predictions"],
            "classes": seg_part["classes"],
            "heads": list(seg_part["probes"]),
        }
    builder.contents.update(
        {
            "metrics": METRICS_JSON,
            "metrics_yaml": METRICS_YAML,
            "predictions": PREDICTIONS,
            "split": {"path": SPLIT, **split_info},
            "tasks": {k: v["type"] for k, v in result["tasks"].items()},
            "features": config.features,
            "labels_join": join_info or None,
        }
    )
    if join_info.get("identifying_columns_left_out"):
        builder.notes.append(
            "labels: identifying columns not used: " + ", ".join(join_info["identifying_columns_left_out"])
        )
    check_written(ProbeContents, builder.contents, what="a probe manifest")
    return builder.finish(hash_obj({"fingerprint": builder.fingerprint, "metrics": result}))


def _robustness(result, emb, linear_probes, patients, corruptions, config, options) -> None:
    from cxrjepa.probe.robustness import corrupted_features

    rows = np.unique(np.concatenate([te for _, _, te in linear_probes.values()]))
    feats = corrupted_features(
        emb,
        rows,
        corruptions,
        list(config.severities),
        feature=config.features,
        device=options.device,
        batch_size=options.batch_size,
        seed=config.seed,
    )
    pos = {int(r): i for i, r in enumerate(rows)}
    for name, (task, probe, te) in linear_probes.items():
        lin = result["tasks"][name]["probes"]["linear"]["metrics"]
        rob: dict = {"clean": {k: {"value": v["value"]} for k, v in lin.items()}}
        idx = np.array([pos[int(r)] for r in te])
        for cname in corruptions:
            rob[cname] = []
            for sev in config.severities:
                s = probe.scores(feats[(cname, sev)][idx])
                ev = metrics.evaluate(task.type, task.y[te], s, patients[te], n_boot=config.bootstrap, seed=config.seed)
                rob[cname].append({"severity": int(sev), "metrics": ev["metrics"]})
        result["tasks"][name]["robustness"] = rob


def _fmt(m: dict) -> str:
    if m.get("value") is None:
        return "n/a"
    ci = m.get("ci")
    return f"{m['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _summarize(task: Task, entry: dict) -> None:
    key = metrics.PRIMARY[task.type]
    parts = [f"{kind} {key} {_fmt(p['metrics'][key])}" for kind, p in entry["probes"].items()]
    console.info(f"{task.name} ({task.type}, test n={entry['n']['test']}): " + "; ".join(parts))
    for attr, sg in (entry.get("subgroups") or {}).items():
        if sg.get("flagged") and "gap" in sg:
            gap = sg["gap"]
            console.info(
                f"  largest subgroup gap: {attr} {gap['metric']} {gap['value']:.3f} ({gap['between'][0]} vs {gap['between'][1]})"
            )
