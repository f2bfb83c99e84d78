"""Launching a stage on several processes: the launch spec, the torchrun command, running it.

The launcher writes a :class:`LaunchSpec` -- the resolved config (``config.yaml``) and ``launch.json`` (the
stage function each worker calls and its inputs and options) -- to a private temporary folder, runs

    python -m torch.distributed.run --standalone --nproc-per-node=N --log-dir=FOLDER/torchrun \
        -m cxrjepa.cli.worker FOLDER/launch.json

and removes the folder, with torchrun's own log folder inside it, when torchrun returns (the folder is
node-local: on a multi-node run each node's launcher writes its own). Workers therefore start from exactly the config the launcher resolved, whatever
way it was given (command line, Python, a pipeline). ``--standalone`` lets torchrun's c10d rendezvous bind
its own port, which the workers' process group reuses; multi-node runs use ``--rdzv-endpoint`` instead.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxrjepa.core import console
from cxrjepa.core.atomic import atomic_write_json, atomic_write_text
from cxrjepa.core.errors import UsageError
from cxrjepa.runtime.group import WORKER_ENV, cpu_count
from cxrjepa.runtime.plan import ProcessPlan
from cxrjepa.runtime.signals import forwarding

SPEC_FILE = "launch.json"
CONFIG_FILE = "config.yaml"
FORMAT = "cxrjepa.launch/1"
#: torchrun's log folder, inside the launch folder
TORCHRUN_LOGS = "torchrun"
#: the module torchrun runs in every worker (it reads the spec and calls its entry)
WORKER_MODULE = "cxrjepa.cli.worker"


@dataclass
class LaunchSpec:
    """What every worker of a launch starts from."""

    #: the stage, for messages (pretrain, embed)
    stage: str
    #: ``package.module:function`` each worker calls with this spec
    entry: str
    #: the entry's JSON-able arguments (inputs, options; paths as absolute text)
    args: dict
    #: the resolved config as YAML (written next to the spec as config.yaml)
    config: str
    #: the launcher's console settings, so workers are as quiet or verbose as it is
    quiet: bool = False
    verbose: bool = False
    #: the folder the spec was written to or read from
    folder: Path | None = field(default=None, compare=False, repr=False)

    @property
    def config_path(self) -> Path:
        if self.folder is None:
            raise ValueError("the launch spec has not been written yet")
        return self.folder / CONFIG_FILE

    def write(self, folder: str | Path) -> Path:
        """Write ``config.yaml`` and then ``launch.json`` into ``folder``; returns the path of launch.json."""
        folder = Path(folder)
        atomic_write_text(folder / CONFIG_FILE, self.config)
        data = {k: v for k, v in asdict(self).items() if k not in ("config", "folder")}
        atomic_write_json(folder / SPEC_FILE, {"format": FORMAT, **data, "config_file": CONFIG_FILE})
        self.folder = folder
        return folder / SPEC_FILE

    @classmethod
    def read(cls, path: str | Path) -> LaunchSpec:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            config = (path.parent / data.pop("config_file")).read_text()
        except (OSError, ValueError, KeyError):
            raise UsageError(f"'{path}' is not a readable cxrjepa launch spec.") from None
        if data.pop("format", None) != FORMAT:
            raise UsageError(f"'{path}' is not a {FORMAT} launch spec.")
        return cls(**data, config=config, folder=path.parent)

    def call(self) -> Any:
        """Run the spec's entry in this process (the worker side of a launch)."""
        module, _, name = self.entry.partition(":")
        return getattr(importlib.import_module(module), name)(self)


def launch_command(
    spec_path: str | Path, plan: ProcessPlan, *, node_rank: int = 0, rdzv_endpoint: str | None = None
) -> list[str]:
    """The torchrun command that runs the launch spec ``spec_path`` as ``plan.nproc`` workers on this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if plan.nnodes == 1 and not rdzv_endpoint:
        cmd.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise UsageError("Multi-node runs need --rdzv-endpoint HOST:PORT (node 0's address and a free port).")
        if not 0 <= node_rank < plan.nnodes:
            raise UsageError(f"--node-rank must be between 0 and {plan.nnodes - 1} for --nnodes {plan.nnodes}.")
        cmd += [f"--nnodes={plan.nnodes}", f"--node-rank={node_rank}", f"--rdzv-endpoint={rdzv_endpoint}"]
    log_dir = Path(spec_path).parent / TORCHRUN_LOGS  # torchrun's own files go with the spec (else a /tmp leftover)
    cmd += [f"--nproc-per-node={plan.nproc}", f"--log-dir={log_dir}", "-m", WORKER_MODULE, str(spec_path)]
    return cmd


def format_command(cmd: list[str]) -> str:
    return shlex.join(cmd)


def dry_run_command(plan: ProcessPlan, *, node_rank: int = 0, rdzv_endpoint: str | None = None) -> str:
    """The launch command as ``--dry-run`` shows it (the spec's folder is made at launch time)."""
    spec = Path(tempfile.gettempdir()) / "cxrjepa-launch-XXXXXXXX" / SPEC_FILE
    return format_command(launch_command(spec, plan, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint))


def run_command(cmd: list[str], *, cpu_threads: int | None = None) -> int:
    """Run a torchrun command and return its exit code. Stop signals reach the workers through torchrun;
    so does Ctrl-C (the launcher waits for them, then re-raises).

    ``cpu_threads``: OMP threads per worker for CPU runs (torchrun's default is 1), unless the user set
    OMP_NUM_THREADS."""
    env = dict(os.environ)
    for key in WORKER_ENV:  # the launcher sets these for its workers
        env.pop(key, None)
    if cpu_threads and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(cpu_threads)
    proc = subprocess.Popen(cmd, env=env)
    with forwarding(proc):
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.wait()
            raise


def launch(spec: LaunchSpec, plan: ProcessPlan, *, node_rank: int = 0, rdzv_endpoint: str | None = None) -> int:
    """Run ``spec`` on this node's ``plan.nproc`` workers and return torchrun's exit code.

    The spec goes to a private temporary folder that is removed when the workers are done (also on errors
    and Ctrl-C)."""
    with tempfile.TemporaryDirectory(prefix="cxrjepa-launch-") as tmp:
        path = spec.write(tmp)
        cmd = launch_command(path, plan, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
        where = f" on this node ({plan.world} in all)" if plan.nnodes > 1 else ""
        console.info(f"Launching {plan.nproc} {spec.stage} processes{where}: {format_command(cmd)}")
        return run_command(cmd, cpu_threads=None if plan.cuda else max(1, cpu_count() // plan.nproc))
