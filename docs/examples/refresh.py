"""Copy one manifest per artifact kind from a quickstart run into docs/examples/ (the examples in docs/artifacts.md).

cxrjepa run pipelines/quickstart.yaml && python docs/examples/refresh.py runs/quickstart
"""

from __future__ import annotations

import sys
from pathlib import Path

STAGES = {
    "demo": "demo",
    "dataset": "dataset",
    "run": "run",
    "embeddings": "embeddings",
    "probe": "probe",
    "report": "report",
    "export": "export",
}


def main(root: str) -> None:
    here = Path(__file__).resolve().parent
    for stage, kind in STAGES.items():
        text = (Path(root) / stage / "manifest.yaml").read_text()
        (here / f"{kind}.manifest.yaml").write_text(
            f"# docs/examples: the `{kind}` artifact of `cxrjepa run pipelines/quickstart.yaml`\n" + text
        )
        print(f"{kind}: {here / f'{kind}.manifest.yaml'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart")
