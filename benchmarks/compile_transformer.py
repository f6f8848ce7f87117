"""``torch.compile(opt.step)`` on a small transformer for the rules traced under compile (Adafactor, LARS).

A 2-layer ``TransformerEncoder`` LM (d=64, 27 parameter tensors), its parameters grouped by
``optimlab.create`` (no weight decay on biases and norms). For each optimizer: the time of the
first compiled call (Dynamo's trace and Inductor's compilation), then the steady per-step time
of the compiled and the eager step, alternating, best of 3 windows of 50 steps, one thread.
Prints a markdown table; nothing is written.

    python benchmarks/compile_transformer.py [--optimizers adafactor,lars]
"""

from __future__ import annotations

import argparse
import time

import torch

import optimlab

V, D = 64, 64


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(D, 4, 128, dropout=0.0, batch_first=True)
    return torch.nn.Sequential(torch.nn.Embedding(V, D), torch.nn.TransformerEncoder(layer, 2),
                               torch.nn.Linear(D, V))


def per_step_us(fn, n: int = 50) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizers", default="adafactor,lars")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| optimizer | tensors | first compiled call s | compiled us | eager us | compiled / eager |")
    print("|---|---|---|---|---|---|")
    for name in args.optimizers.split(","):
        m = model()
        opt = optimlab.create(name, m, lr=1e-2)
        for p in m.parameters():
            p.grad = torch.randn_like(p)
        step = torch.compile(opt.step)
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        for _ in range(5):
            step()
            opt.step()
        compiled = eager = float("inf")
        for _ in range(3):
            compiled = min(compiled, per_step_us(step))
            eager = min(eager, per_step_us(opt.step))
        tensors = sum(1 for _ in m.parameters())
        print(f"| {name} | {tensors} | {first:.1f} | {compiled:.0f} | {eager:.0f} | {compiled / eager:.2f} |")


if __name__ == "__main__":
    main()
