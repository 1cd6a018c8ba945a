"""Benchmark: skewed per-sample cost on 2 workers -- Ray's dynamic blocks vs torchrun's shards.

The pending samples cost 10x more in the first half (in id order) than in the second: the
semantic branch (a Python callable) sleeps ``10 * seconds`` on a "heavy" image and ``seconds``
on a light one, so the timings measure scheduling alone, not CPU contention. Three runs of the
same SSA request (masks from a field), each a fresh process, side by side:

- one process (``backend="local"``);
- torchrun, 2 ranks: fixed contiguous shards (rank 0 gets every heavy sample);
- Ray, 2 actors (``backend="ray"``): blocks of ``--block-size`` handed out as actors free up.

Reported per run: the wall time of the whole command (start-up included: Python imports,
torchrun's process group, Ray's local cluster and actors) and the labelling span (first to last
sample written, read back from the samples' ``last_modified_at``), and the labels of the three
runs compared.

Usage: ``python -m benchmarks.bench_ray_skew [--samples 32] [--seconds 0.15] [--block-size 2]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import torch

from benchmarks.harness import Results

HEAVY = 255  # red value of pixel (0, 0) of a heavy image
COST_RATIO = 10


class SkewedCostBranch:
    """``image -> (class map, classes)``: sleeps 10x longer on heavy images.

    Args:
        seconds: the time a light image costs.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, image: np.ndarray):
        heavy = int(image[0, 0, 0]) == HEAVY
        time.sleep(self.seconds * (COST_RATIO if heavy else 1))
        return (image[..., 1] // 128).astype(np.int64), {0: "dark", 1: "light"}


def build_dataset(name: str, directory: str, n: int):
    """``n`` small images, the first half heavy, each with two instance masks (``instances``)."""
    import fiftyone as fo
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    ds = fo.Dataset(name)
    ds.persistent = True  # the runs are other processes
    samples = []
    for i in range(n):
        image = rng.integers(0, 254, size=(48, 64, 3), dtype=np.uint8)
        image[0, 0, 0] = HEAVY if i < n // 2 else 0
        path = os.path.join(directory, f"skew_{i:04d}.png")
        Image.fromarray(image).save(path)
        top = np.zeros((48, 64), bool)
        top[:24] = True
        detections = [
            fo.Detection(label="object", bounding_box=[0, 0, 1, 0.5], mask=top[:24]),
            fo.Detection(label="object", bounding_box=[0, 0.5, 1, 0.5], mask=~top[24:]),
        ]
        samples.append(fo.Sample(filepath=path, instances=fo.Detections(detections=detections)))
    ds.add_samples(samples, progress=False)  # ids ascend in this order: heavy half first
    return ds


def worker(args: argparse.Namespace) -> int:
    """One labelling run (a rank under torchrun), as the command line would run it."""
    import fiftyone as fo

    from fiftyone_ssa import apply_ssa
    from fiftyone_ssa.cli.common import run_on_ranks

    samples = fo.load_dataset(args.dataset)
    options = {}
    if args.backend == "ray":
        options = {"ray_workers": 2, "ray_block_size": args.block_size}
    return run_on_ranks(
        lambda: apply_ssa(
            samples,
            label_field=args.label_field,
            semantic_branch=SkewedCostBranch(args.seconds),
            mask_branch="field:instances",
            num_workers=1,
            progress=False,
            backend=args.backend,
            **options,
        )
    )


def launch(dataset: str, label_field: str, how: str, args: argparse.Namespace) -> float:
    """Runs one labelling command; returns its wall time in seconds."""
    python = [sys.executable]
    if how == "torchrun":
        python += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*python, "-m", "benchmarks.bench_ray_skew", "--worker", dataset]
    command += ["--label-field", label_field, "--seconds", str(args.seconds)]
    command += ["--block-size", str(args.block_size)]
    command += ["--backend", "ray" if how == "ray" else "local"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{how} run failed:\n{result.stderr[-3000:]}")
    print(result.stdout.strip().splitlines()[-1], file=sys.stderr)
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=0.15, help="cost of a light image")
    parser.add_argument("--block-size", type=int, default=2, help="Ray's samples per block")
    parser.add_argument("--worker", metavar="DATASET", help=argparse.SUPPRESS)
    parser.add_argument("--label-field", default="ssa", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="local", help=argparse.SUPPRESS)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.worker:
        args.dataset = args.worker
        sys.exit(worker(args))

    import tempfile

    import fiftyone as fo

    name = f"bench-ray-skew-{uuid.uuid4().hex[:8]}"
    work = tempfile.mkdtemp(prefix="bench_ray_skew_")
    ds = build_dataset(name, work, args.samples)
    n, light = args.samples, args.seconds
    one = n / 2 * light * (COST_RATIO + 1)
    settings = (
        f"{n} samples, the first half (in id order) {COST_RATIO}x the second: "
        f"{light * COST_RATIO:g} s vs {light:g} s each (a sleeping callable semantic branch, "
        f"masks from a field). Labelling needs {one:.1f} s in one process, "
        f"{n / 2 * light * COST_RATIO:.1f} s on 2 fixed shards, {one / 2:.1f} s on 2 ideal "
        f"dynamic workers. Ray: 2 actors, blocks of {args.block_size}."
    )
    timings = {}
    try:
        for how in ("one process", "torchrun", "ray"):
            field = how.replace(" ", "_")
            wall = launch(name, field, how, args)
            ds.reload()
            stamps = ds.exists(field).values("last_modified_at")
            assert len(stamps) == n, f"{how}: {len(stamps)} of {n} samples labelled"
            timings[how] = (wall, (max(stamps) - min(stamps)).total_seconds())
        maps = {
            field: [m.tobytes() for m in ds.values(f"{field}.mask")]
            for field in ("one_process", "torchrun", "ray")
        }
        same = maps["one_process"] == maps["torchrun"] == maps["ray"]
    finally:
        fo.load_dataset(name).delete()

    environment = Results("", torch.device("cpu"), "").environment()
    lines = ["### Skewed cost on 2 workers: Ray vs torchrun vs one process", ""]
    lines += [environment, "", settings, ""]
    lines.append("| run | whole command (s) | labelling span (s) | span / Ray's |")
    lines.append("| --- | ---: | ---: | ---: |")
    for how, (wall, span) in timings.items():
        ratio = span / timings["ray"][1]
        lines.append(f"| {how} | {wall:.1f} | {span:.1f} | {ratio:.2f}x |")
    lines += [
        "",
        "Whole command: start-up included (imports; torchrun's process group; Ray's local "
        "cluster and actors). Labelling span: first to last sample written "
        f"(`last_modified_at`). Labels of the three runs identical: {same}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
