"""Writes the one results file of ``benchmarks/gpu_check.sh``: ``gpu.md`` (and ``gpu.json`` beside it).

gpu_check.sh runs each step in its own process, with its own time limit, into a work folder:

* ``machine.tsv``  ``key<TAB>value`` rows (GPU name, driver, torch and CUDA versions, commit, ...);
* ``steps.tsv``    one row per step: ``name<TAB>kind<TAB>status<TAB>exit code<TAB>seconds<TAB>limit s<TAB>note``,
                   status one of ok, failed, timeout, skipped; kind says what the step's files hold
                   (env, tests, pretrain, embed, salt);
* ``NAME.log``     the step's output; ``NAME.json`` the benchmark's ``--json``; ``NAME.xml`` pytest's JUnit XML.

This script reads them and writes the tables: one row per step (a failed or timed-out step is a row, with
the end of its log under "Failures", and never stops the others), the gpu-marked tests' counts, each
objective's step images/s and MFU (eager and compiled) with lightly's I-JEPA as the peer, embed against a
bare forward, and the SALT step ratios. Standard library only: it runs whatever state the steps left.

    python benchmarks/gpu_results.py WORK_DIR --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

STATUSES = ("ok", "failed", "timeout", "skipped")
LOG_TAIL = 30


@dataclass
class Step:
    name: str
    kind: str
    status: str
    rc: int | None
    seconds: float
    limit_s: int
    note: str = ""

    @property
    def missing(self) -> str:
        """Why a step left no figures."""
        return f"skipped: {self.note}" if self.status == "skipped" else f"{self.shown}; see Failures"

    @property
    def shown(self) -> str:
        if self.status == "failed":
            return f"**failed** (exit {self.rc})"
        if self.status == "timeout":
            return f"**timed out** after {self.limit_s} s"
        return self.status


def read_steps(work: Path) -> list[Step]:
    """The step records gpu_check.sh wrote, in the order it ran them."""
    steps = []
    path = work / "steps.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        if not line.strip():
            continue
        name, kind, status, rc, seconds, limit, *note = line.split("\t")
        if status not in STATUSES:
            raise ValueError(f"{path}: step {name!r} has status {status!r}, not one of {', '.join(STATUSES)}.")
        steps.append(Step(name, kind, status, int(rc) if rc else None, float(seconds), int(limit), "\t".join(note)))
    return steps


def read_machine(work: Path) -> dict[str, str]:
    path = work / "machine.tsv"
    rows = [line.split("\t", 1) for line in path.read_text().splitlines()] if path.is_file() else []
    return {r[0]: r[1] for r in rows if len(r) == 2}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def figures(work: Path, step: Step) -> dict | None:
    """The benchmark's ``--json`` output of a step that ran (a skipped step has none, whatever is on disk)."""
    return None if step.status == "skipped" else read_json(work / f"{step.name}.json")


def junit_counts(path: Path) -> dict | None:
    """passed / failed / errors / skipped and the ids of the tests that did not pass, from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "not_passed": []}
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            counts["not_passed"].append(test_id)
        elif case.find("error") is not None:
            counts["errors"] += 1
            counts["not_passed"].append(test_id)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"


def num(x, spec: str = ",.1f") -> str:
    return format(x, spec) if isinstance(x, int | float) else "-"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table (a ``|`` inside a cell, as in an error message, is escaped)."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows),
    ]


def pretrain_rows(runs: list[dict]) -> tuple[list[list[str]], list[str]]:
    """Table rows (objective, mode, batch, images/s, MFU, TFLOP/step, ms/step, recipe) of every pretrain.py
    run's gpu section, the peer's row after the I-JEPA rows, and notes (ratios, names not in the checkout)."""
    rows, notes = [], []
    for run in runs:
        gpu = run.get("gpu_vitb16")
        if not gpu:
            notes.append("A pretrain step ran without a gpu section (no CUDA device in that process).")
            continue
        batch = str(gpu.get("batch", "-"))
        for name, entry in gpu.get("objectives", {}).items():
            for mode in ("eager", "compiled"):
                r = entry.get(mode)
                if r is None:
                    continue
                if "error" in r:
                    rows.append([name, mode, batch, f"failed: {r['error']}", "-", "-", "-", entry.get("recipe", "")])
                    continue
                rows.append(
                    [
                        name,
                        mode,
                        batch,
                        num(r.get("images_per_s")),
                        num(r.get("mfu"), ".1%"),
                        num(r.get("tflop_per_step"), ".2f"),
                        num(r["step_s"] * 1e3 if "step_s" in r else None),
                        entry.get("recipe", ""),
                    ]
                )
        peer = gpu.get("lightly")
        if peer is not None:
            shown = num(peer.get("images_per_s")) if "images_per_s" in peer else peer.get("error", "-")
            ms = num(peer["step_s"] * 1e3 if "step_s" in peer else None)
            rows.append(["lightly I-JEPA (peer)", "eager", batch, shown, "-", "-", ms, "same ViT, images and masks"])
            ratios = peer.get("cxrjepa_ratio") or {}
            if ratios:
                notes.append(
                    "cxrjepa I-JEPA / lightly I-JEPA images/s: "
                    + ", ".join(f"{mode} **{r:.2f}x**" for mode, r in ratios.items())
                    + "."
                )
        if gpu.get("not_registered"):
            notes.append(f"Not registered in this checkout (not timed): {', '.join(gpu['not_registered'])}.")
    return rows, notes


def render(work: Path) -> tuple[str, dict]:
    """(markdown, JSON) of the check whose step records are in ``work``."""
    steps = read_steps(work)
    machine = read_machine(work)
    out: dict = {"machine": machine, "steps": [asdict(s) for s in steps], "figures": {}}
    md = ["# GPU check", ""]
    md.append(
        f"`benchmarks/gpu_check.sh`, {machine.get('date', '?')}: one run, every figure below measured in it "
        "(ratios compare numbers taken minutes apart on the same GPU)."
    )
    md += ["", *table(["machine", ""], [[k, v] for k, v in machine.items() if k != "date"]), ""]
    total = sum(s.seconds for s in steps)
    md += ["## Steps", ""]
    md += table(
        ["step", "status", "seconds", "limit s", "note"],
        [[s.name, s.shown, f"{s.seconds:.0f}", str(s.limit_s), s.note] for s in steps],
    )
    md += ["", f"Total {total:.0f} s."]

    tests = [s for s in steps if s.kind == "tests"]
    for s in tests:
        counts = None if s.status == "skipped" else junit_counts(work / f"{s.name}.xml")
        out["figures"][s.name] = counts
        md += ["", "## GPU tests (`pytest -m gpu`)", ""]
        if counts is None:
            md.append(f"No test report ({s.missing}).")
            continue
        md.append(
            f"**{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
            f"{counts['skipped']} skipped.**"
        )
        if counts["not_passed"]:
            md += ["", "Not passed: " + ", ".join(f"`{t}`" for t in counts["not_passed"]) + "."]

    runs = [(s, figures(work, s)) for s in steps if s.kind == "pretrain"]
    if runs:
        out["figures"]["pretrain"] = {s.name: r for s, r in runs}
        rows, notes = pretrain_rows([r for _s, r in runs if r])
        notes += [f"{s.name}: no figures ({s.missing})." for s, r in runs if not r]
        md += ["", "## Pretraining step: ViT-B/16, 224 px, bf16 (`benchmarks/pretrain.py`)"]
        if rows:
            md += [
                "",
                *table(["objective", "mode", "batch", "images/s", "MFU", "TFLOP/step", "ms/step", "config"], rows),
            ]
        md += ["", *(f"- {n}" for n in notes)] if notes else []
        md += [
            "",
            "The trainer's step (loss, backward, fused AdamW, the objective's update after the step) on batches of "
            "the trainer's data path staged on the GPU; compiled = `torch.compile` per transformer block, warm-up "
            "(compilation) not timed. MFU = the objectives' model FLOPs / time / the GPU's dense bf16 peak.",
        ]

    for s in (s for s in steps if s.kind == "embed"):
        r = figures(work, s)
        out["figures"][s.name] = r
        md += ["", "## Embed vs a bare forward (`benchmarks/embed.py`)", ""]
        if not r:
            md.append(f"No figures ({s.missing}).")
            continue
        md += table(
            ["encoder", "images", "px", "batch", "bare forward img/s", "embed img/s", "embed / bare"],
            [
                [
                    str(r.get("encoder")),
                    str(r.get("n")),
                    str(r.get("size")),
                    str(r.get("batch_size")),
                    num(r.get("bare_images_per_s")),
                    num(r.get("embed_images_per_s")),
                    f"**{num(r.get('ratio'), '.2f')}x**",
                ]
            ],
        )

    for s in (s for s in steps if s.kind == "salt"):
        r = figures(work, s)
        out["figures"][s.name] = r
        gpu = (r or {}).get("gpu")
        md += ["", "## SALT step vs I-JEPA (`benchmarks/salt.py`)", ""]
        if not gpu:
            md.append(f"No GPU figures ({s.missing}).")
            continue
        md.append(
            f"ViT-B/16 student, 224 px, batch {gpu.get('batch')}, bf16, eager; speed-up = I-JEPA time / row time."
        )
        md += [""] + table(
            ["step", "images/s", "ms/step", "speed-up vs I-JEPA (wall)", "(model FLOPs)"],
            [
                [
                    row["row"],
                    num(row.get("images_per_s")),
                    num(row["step_s"] * 1e3 if "step_s" in row else None),
                    f"{num(row.get('speedup_vs_ijepa'), '.2f')}x",
                    f"{num(row.get('flop_ratio_vs_ijepa'), '.2f')}x",
                ]
                for row in gpu.get("rows", [])
            ],
        )

    failed = [s for s in steps if s.status in ("failed", "timeout")]
    if failed:
        md += ["", "## Failures", ""]
        for s in failed:
            md += [f"### {s.name}: {s.shown}", "", "```", log_tail(work / f"{s.name}.log"), "```", ""]
    return "\n".join(md).rstrip() + "\n", out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", type=Path, help="the folder gpu_check.sh ran its steps in")
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu.md and gpu.json")
    args = ap.parse_args(argv)
    if not (args.work / "steps.tsv").is_file():
        print(f"{args.work} holds no steps.tsv: not a gpu_check.sh work folder.", file=sys.stderr)
        return 2
    md, data = render(args.work)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.md").write_text(md)
    (args.out / "gpu.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"Wrote {args.out / 'gpu.md'} and {args.out / 'gpu.json'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
