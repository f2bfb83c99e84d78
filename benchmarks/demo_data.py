"""How fast is `cxrjepa demo-data`, and where does the time go?

Runs the generator's parts separately in one process (CPU time, one core) and prints each part's share:
drawing phantoms, building datasets, encoding transfer syntaxes, writing files. Also times a whole
`run_demo` call (wall clock) for the default 240 images.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/demo_data.py [--n 240]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections import defaultdict

from cxrjepa.demo import DemoConfig, codecs, plan_cases, render_case, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=240)
    args = parser.parse_args()
    cfg = DemoConfig(n=args.n).resolved()
    cases = plan_cases(cfg)

    clock = time.process_time
    t0 = clock()
    rendered = [render_case(cfg, c) for c in cases]
    t_render = clock() - t0
    pixels = sum(r.phantom.image.size for r in rendered)

    by_syntax: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    t0 = clock()
    for r in rendered:
        s = clock()
        codecs.encode(r.dataset, r.case.syntax)
        by_syntax[r.case.syntax] += clock() - s
        count[r.case.syntax] += 1
    t_encode = clock() - t0
    t0 = clock()
    for r in rendered:
        r.dataset.save_as(io.BytesIO(), enforce_file_format=True)
    t_write = clock() - t0

    total = t_render + t_encode + t_write
    print(f"{len(cases)} images, {pixels / len(cases) / 1e3:.0f} kpixels each on average (CPU seconds, one core)")
    print(f"  draw + build datasets {t_render:6.2f} s  ({t_render / total:5.1%})")
    print(f"  encode                {t_encode:6.2f} s  ({t_encode / total:5.1%})")
    print(f"  serialise             {t_write:6.2f} s  ({t_write / total:5.1%})")
    print(f"  total                 {total:6.2f} s  -> {len(cases) / total:.0f} images/s")
    print("  encode time per file by transfer syntax (ms):")
    for key in sorted(by_syntax, key=lambda k: -by_syntax[k] / count[k]):
        print(
            f"    {key:14s} {1000 * by_syntax[key] / count[key]:6.1f}  ({count[key]} files, encoder {codecs.encoder_for(key)})"
        )

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_demo(f"{tmp}/demo", DemoConfig(n=args.n))
        wall = time.perf_counter() - start
    print(f"run_demo end to end (wall clock, files, masks, labels, manifest): {wall:.2f} s")


if __name__ == "__main__":
    main()
