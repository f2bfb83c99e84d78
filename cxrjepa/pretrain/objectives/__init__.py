"""Pretraining objectives, by name (``objective:`` in the config, ``--objective`` on the command line).

An objective is a :class:`~cxrjepa.pretrain.objectives.base.Objective`: it owns its modules (a trainable
``student`` and any frozen ones, like I-JEPA's EMA target or SALT's teacher), says which masks (or views)
the data stream must carry, computes the loss, updates itself after each optimizer step, and names the encoder to
export. The trainer does the rest (devices, parallelism, precision, schedules, checkpoints, monitors).
To add one: subclass ``Objective`` in a module here and add it to :data:`OBJECTIVES`.
"""

from __future__ import annotations

import importlib

#: objective name -> "module:Class"
OBJECTIVES: dict[str, str] = {
    "ijepa": "cxrjepa.pretrain.objectives.ijepa:IJEPA",
    "jepa-sigreg": "cxrjepa.pretrain.objectives.jepa_sigreg:JEPASigReg",
    "lejepa": "cxrjepa.pretrain.objectives.lejepa:LeJEPA",
    "pixel": "cxrjepa.pretrain.objectives.pixel:PixelReconstruction",
    "salt": "cxrjepa.pretrain.objectives.salt:SALT",
}


def objective_class(name: str):
    module, cls = OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_objective(config, inputs=None):
    """The objective named by ``config.objective``, built from ``config`` (a PretrainConfig) and, for
    objectives that take them, ``inputs`` (an ObjectiveInputs: teacher, data normalization)."""
    cls = objective_class(config.objective)
    if getattr(cls, "takes_inputs", False):
        return cls(config, inputs=inputs)
    return cls(config)
