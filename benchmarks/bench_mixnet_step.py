"""Benchmark one MixNet training step (Chen & Merhof 2018) in the memory formats and precisions the trainer can use.

A step is what ``brainseg train`` does per batch: the loss of :meth:`MixNetFamily.loss` (PyTorch's default,
contiguous, memory format), or the same network and slices in channels-last format, under bfloat16 autocast
or in float32, then backward and a Nesterov SGD step. Random crops and labels: the time does not depend on
them. Two warm-up steps, then the mean of ``--steps``; prints seconds per step and whether every gradient
was finite. On this project's 2-core AVX-512 BF16 CPU (torch 2.13, 2026-12-05) channels-last was faster in
bfloat16 (1.71 s against 2.23 s) but its dilated convolutions' weight gradients were NaN, so the trainer
keeps the default format.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_mixnet_step.py [--version 2] [--classes 135] [--batch 8]
        [--crop 128] [--steps 6] [--ways channels-last contiguous] [--precisions bfloat16 float32]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F


def main() -> None:
    """Time every way and precision and print one line each."""
    from brainseg.config import TrainingConfig
    from brainseg.families.chen2018 import CHEN2018, MixNetViews

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, default=2)
    parser.add_argument("--classes", type=int, default=135)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--ways", nargs="+", default=["contiguous", "channels-last"])
    parser.add_argument("--precisions", nargs="+", default=["bfloat16", "float32"])
    args = parser.parse_args()

    torch.manual_seed(0)
    base = MixNetViews(["axial"], version=args.version, num_classes=args.classes, shared=True)
    tc = TrainingConfig()
    slices = torch.randn(args.batch, 1, args.crop, args.crop)
    targets = torch.randint(0, args.classes, (args.batch, args.crop, args.crop))
    batch = {"slices": slices, "plane": "axial"}
    print(
        f"MixNetv{args.version}, {args.classes} classes, {args.batch} crops of {args.crop}², {torch.get_num_threads()} threads"
    )
    for precision in args.precisions:
        for way in args.ways:
            network, finite = copy.deepcopy(base).train(), []
            optimizer = torch.optim.SGD(network.parameters(), lr=1e-4, momentum=0.99, nesterov=True)

            def step() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                    if way == "channels-last":
                        x = slices.contiguous(memory_format=torch.channels_last)
                        loss = F.cross_entropy(network.to(memory_format=torch.channels_last)(x, "axial"), targets)
                    else:
                        loss = CHEN2018.loss(network, batch, targets, tc)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                finite.append(all(bool(torch.isfinite(p.grad).all()) for p in network.parameters()))
                optimizer.step()

            for _ in range(2):
                step()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds = (time.perf_counter() - t0) / args.steps
            gradients = (
                "finite gradients" if all(finite) else f"NaN gradients in {finite.count(False)} of {len(finite)} steps"
            )
            print(f"{precision:>9} {way:>13}: {seconds:.2f} s per step, {gradients}")


if __name__ == "__main__":
    main()
