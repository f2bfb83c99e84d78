"""The pretrained contenders of the quality benchmarks (``quality.py``, ``segmentation.py``) and how each is
pretrained at a CPU budget (``benchmarks/budget.py``).

A contender is a name -> an objective, its config file(s) and extra ``--set`` overrides. The shipped CPU
recipe (``recipes/cxr-small-cpu.yaml``, ``recipes/us-small-cpu.yaml`` for ultrasound) serves the contender
of the objective it uses; the other contenders use ``benchmarks/configs/<name>-cpu.yaml`` with the recipes'
one modality difference (``augment.hflip``: true for ultrasound, false for chest X-rays) set on top. All of
them keep the recipes' encoder (ViT-Tiny width, 4 blocks, 8 px patches, 64 px, sin-cos positions), so one
random-init twin serves them all; where two contenders' resolved ``model`` sections differ, each model gets
its own twin (``model_key``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.budget import Calibration, Meter, calibrate, over_budget

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"cxr": ROOT / "recipes" / "cxr-small-cpu.yaml", "us": ROOT / "recipes" / "us-small-cpu.yaml"}
#: layered on a benchmark config: what the two shipped recipes differ by
MODALITY_SETS = {"cxr": ("augment.hflip=false",), "us": ("augment.hflip=true",)}


@dataclass(frozen=True)
class Contender:
    name: str
    title: str
    objective: str
    #: extra pretrain --set overrides (after the config files and the modality's)
    sets: tuple[str, ...] = ()

    def configs(self, modality: str) -> tuple[list[Path], list[str]]:
        """The config files and --set overrides this contender pretrains with on a ``modality`` data set."""
        recipe = RECIPES[modality]
        if objective_of(recipe) == self.objective:
            return [recipe], list(self.sets)
        return [ROOT / "benchmarks" / "configs" / f"{self.name}-cpu.yaml"], [*MODALITY_SETS[modality], *self.sets]

    def describe(self, modality: str) -> str:
        files, sets = self.configs(modality)
        return " + ".join([*(f"`{rel(f)}`" for f in files), *(f"`{s}`" for s in sets)])


CONTENDERS = {
    c.name: c
    for c in (
        Contender("ijepa", "I-JEPA", "ijepa"),
        Contender("lejepa", "LeJEPA", "lejepa"),
        Contender("jepa-sigreg", "JEPA-SIGReg", "jepa-sigreg"),
    )
}


def parse_contenders(text: str) -> list[Contender]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or not names:
        raise SystemExit(f"--contenders: unknown '{','.join(unknown)}' (known: {', '.join(CONTENDERS)}).")
    return [CONTENDERS[n] for n in dict.fromkeys(names)]


def objective_of(config: Path) -> str:
    return (yaml.safe_load(config.read_text()) or {}).get("objective", "ijepa")


def rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def model_key(run: Path) -> str:
    """A short digest of a run's resolved ``model`` section: runs with equal keys share a random-init twin."""
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    return hashlib.sha1(json.dumps(model, sort_keys=True).encode()).hexdigest()[:8]


class Runner:
    """Runs cxrjepa commands in subprocesses (printed, and recorded in ``log`` unless ``record=False``) with
    ``env``; each call returns its wall and CPU seconds (children CPU: the command and its workers)."""

    def __init__(self, env: dict | None = None):
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.log: list[str] = []

    def __call__(self, cmd: list, record: bool = True) -> Meter:
        text = "cxrjepa " + " ".join(str(c) for c in cmd)
        print(f"$ {text}", flush=True)
        if record:
            self.log.append(text)
        meter = Meter()
        res = subprocess.run([sys.executable, "-m", "cxrjepa", *map(str, cmd)], env=self.env)  # noqa: S603
        if res.returncode not in (0, 3):  # 3: finished, some inputs rejected (they are in the ledger)
            raise SystemExit(f"command failed ({res.returncode}): {text}")
        return meter.stop()


def monitor_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def pretrain(
    runner: Runner,
    contender: Contender,
    modality: str,
    data: Path,
    folder: Path,
    budget: float,
    seed: int = 0,
    extra: tuple[str, ...] = (),
) -> dict:
    """Pretrain ``contender`` on ``data`` into ``folder/run`` within ``budget`` CPU seconds: calibrate (two
    short runs, cached), then train with the calibrated ``train.steps``. A rerun skips what is finished (the
    calibration, a complete run: pretrain itself skips it) and reads back the measured cost."""
    files, sets = contender.configs(modality)
    run = folder / "run"

    def command(out: Path, steps: int) -> list:
        cmd = ["pretrain", "--data", data, "--out", out, "--gpus", "0", "--quiet"]
        for f in files:
            cmd += ["--config", f]
        for s in [*sets, f"train.seed={seed}", *extra, f"train.steps={steps}"]:
            cmd += ["--set", s]
        return cmd

    cal: Calibration = calibrate(
        lambda steps, out: runner(command(out, steps) + ["--force"], False).cpu_s, folder, budget
    )
    runner.log.append(
        f"# {contender.name} calibration: {cal.per_step:.2f} CPU s a step + {cal.startup:.1f} CPU s fixed "
        f"-> train.steps={cal.steps} for {budget:.0f} CPU s"
    )
    cost_file = folder / "pretrain-cost.json"  # measured when the run was made; a rerun that skips it reads it back
    cost = json.loads(cost_file.read_text()) if cost_file.exists() else {}
    complete = (run / "manifest.yaml").exists() and cost.get("steps") == cal.steps
    # an interrupted run of these very steps continues (its CPU before the interruption is not counted); a
    # finished run of other steps (another budget) is stale and starts over
    old = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else None
    resumed = not complete and bool(old) and old.get("train", {}).get("steps") == cal.steps
    m = runner(command(run, cal.steps))
    if not complete:
        cost = {"steps": cal.steps, "wall_s": m.wall_s, "cpu_s": m.cpu_s, "resumed": resumed}
        cost_file.write_text(json.dumps(cost))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = monitor_rows(run)
    mon = [r for r in rows if "rankme" in r]
    sig = [r["sigreg"] for r in rows if r.get("sigreg") is not None]
    return {
        "contender": contender,
        "run": run,
        "config": contender.describe(modality),
        "calibration": cal,
        "budget": budget,
        "steps": cfg["train"]["steps"],
        "batch": cfg["train"]["batch_size"],
        "cpu_s": cost["cpu_s"],
        "wall_s": cost["wall_s"],
        "resumed": cost.get("resumed", False),
        "first": mon[0] if mon else {},
        "last": mon[-1] if mon else {},
        "sigreg": sig[-1] if sig else None,
        "model": model_key(run),
    }


def twins(pretrained: list[dict]) -> dict[str, dict]:
    """Random-init twins: model key -> the first contender's run with that model and the contenders it
    serves. Named ``random`` when all share one model, else ``random-<first contender>``."""
    out: dict[str, dict] = {}
    for p in pretrained:
        out.setdefault(p["model"], {"run": p["run"], "serves": []})["serves"].append(p["contender"].name)
    for t in out.values():
        t["name"] = "random" if len(out) == 1 else f"random-{t['serves'][0]}"
    return out


def budget_row(p: dict, label: str) -> str:
    """One Markdown row of the budget table: label | contender | config | steps x batch | budget | measured
    CPU s | wall s | feat_std | RankMe | sigreg."""
    f, la = p["first"], p["last"]
    nan = float("nan")
    sig = f"{p['sigreg']:.2f}" if p["sigreg"] is not None else "-"
    cpu = f"{p['cpu_s']:.0f}" + (" (resumed: last part only)" if p["resumed"] else over_budget(p["cpu_s"], p["budget"]))
    return (
        f"| {label} | {p['contender'].title} | {p['config']} | {p['steps']} x {p['batch']} | {p['budget']:.0f} | "
        f"{cpu} | {p['wall_s']:.0f} | {f.get('feat_std', nan):.2f} -> {la.get('feat_std', nan):.2f} | "
        f"{f.get('rankme', nan):.1f} -> {la.get('rankme', nan):.1f} | {sig} |"
    )


BUDGET_HEADER = [
    "| data set | contender | config | steps x batch | budget CPU s | measured CPU s | wall s | feat_std first -> last "
    "| RankMe first -> last | sigreg (last) |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
