"""Pipeline files: a YAML list of stages, their inputs, params and output folders.

```yaml
name: quickstart
out: runs/quickstart            # root of the stages' output folders (--out overrides)
stages:
  demo:                         # stage id
    stage: demo-data            # which command
    params: {n: 240}            # its science settings (a config mapping)
  dataset:
    stage: ingest
    out: dataset                # folder under the root (default: the stage id)
    inputs: {src: "@demo/dicom", labels: "@demo/labels.csv"}   # "@ID[/sub/path]" = another stage's output
    config: [../recipes/cxr-small-cpu.yaml]                       # recipe files, relative to this file
    options: {workers: 2}       # operational settings (not fingerprinted)
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrjepa.core.config import did_you_mean, read_yaml
from cxrjepa.core.errors import ConfigError

REF = "@"
_PREFIXED = re.compile(r"^([\w.-]+[:=])(@.+)$")
STAGE_KEYS = ("stage", "out", "inputs", "params", "config", "options")


@dataclass
class StageSpec:
    id: str
    stage: str
    out: Path
    inputs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    config: list[Path] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def upstream(self) -> list[str]:
        """Ids of the stages whose outputs this stage reads."""
        ids = []
        for value in _flat(self.inputs):
            prefixed = _PREFIXED.match(value) if isinstance(value, str) else None
            if prefixed:
                value = prefixed.group(2)
            if isinstance(value, str) and value.startswith(REF):
                ids.append(value[1:].split("/", 1)[0])
        return ids


@dataclass
class Pipeline:
    name: str
    path: Path
    root: Path
    stages: list[StageSpec]

    def get(self, stage_id: str) -> StageSpec:
        for s in self.stages:
            if s.id == stage_id:
                return s
        raise ConfigError(
            f"The pipeline has no stage '{stage_id}'." + did_you_mean(stage_id, [s.id for s in self.stages])
        )

    def resolve(self, value: Any) -> Any:
        """Replace "@ID/sub" references by paths under that stage's output folder."""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, str) and value.startswith(REF):
            ref, _, sub = value[1:].partition("/")
            base = self.get(ref).out
            return base / sub if sub else base
        prefixed = _PREFIXED.match(value) if isinstance(value, str) else None
        if prefixed:  # NAME=@ID/sub (ingest --masks NAME=DIR), random:@ID (embed's random twin of a run)
            return f"{prefixed.group(1)}{self.resolve(prefixed.group(2))}"
        return value  # a plain path (relative to the current folder) or a spec such as random:tiny


def _flat(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    if isinstance(value, list):
        return [x for v in value for x in _flat(v)]
    return [value]


def is_recipe(data: dict) -> bool:
    """Whether a YAML mapping is a pretrain recipe (``recipes/``): every top-level key a pretrain config section."""
    import dataclasses

    from cxrjepa.pretrain.config import PretrainConfig  # only on this error path: it imports torch

    keys = set(data) - {"name", "description"}
    return bool(keys) and keys <= {f.name for f in dataclasses.fields(PretrainConfig)}


def load_pipeline(path: str | Path, root: str | Path | None = None, known_stages: list[str] | None = None) -> Pipeline:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Pipeline file '{path}' does not exist.")
    data = read_yaml(path)
    if "stages" not in data and is_recipe(data):
        raise ConfigError(
            f"'{path}' is a pretrain recipe, not a pipeline; use it with cxrjepa pretrain --config {path}"
        )
    unknown = set(data) - {"name", "description", "out", "stages"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(
            f"Unknown pipeline key '{key}' in '{path}'." + did_you_mean(key, ["name", "description", "out", "stages"])
        )
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise ConfigError(f"Pipeline '{path}' needs a 'stages' mapping of stage ids to stage settings.")
    root_path = Path(root) if root is not None else Path(data.get("out") or Path("runs") / path.stem)
    stages: list[StageSpec] = []
    seen: set[str] = set()
    for sid, raw in stages_raw.items():
        sid = str(sid)
        if not isinstance(raw, dict):
            raise ConfigError(f"Stage '{sid}' in '{path}' must be a mapping with at least 'stage'.")
        for key in raw:
            if key not in STAGE_KEYS:
                raise ConfigError(f"Unknown key '{key}' in stage '{sid}'." + did_you_mean(str(key), STAGE_KEYS))
        stage = raw.get("stage")
        if not stage:
            raise ConfigError(f"Stage '{sid}' in '{path}' does not say which 'stage' (command) it runs.")
        if known_stages is not None and stage not in known_stages:
            raise ConfigError(f"Stage '{sid}' runs unknown stage '{stage}'." + did_you_mean(str(stage), known_stages))
        configs = raw.get("config") or []
        if isinstance(configs, str):
            configs = [configs]
        spec = StageSpec(
            id=sid,
            stage=str(stage),
            out=root_path / str(raw.get("out") or sid),
            inputs=dict(raw.get("inputs") or {}),
            params=dict(raw.get("params") or {}),
            config=[(path.parent / c) for c in configs],
            options=dict(raw.get("options") or {}),
        )
        for up in spec.upstream():
            if up not in seen:
                where = "a later stage" if up in stages_raw else "no stage"
                raise ConfigError(
                    f"Stage '{sid}' reads '@{up}', which is {where}; stages must come after their inputs."
                )
        stages.append(spec)
        seen.add(sid)
    return Pipeline(name=str(data.get("name") or path.stem), path=path, root=root_path, stages=stages)
