"""A one-minute analysis demo on embedded data: train the paper's model A on two moons,
then compare its layers under four kinds of noise and write the LSA table and figure.

Run: ``python -m lsa_train.demo [output_dir]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from sklearn.datasets import make_moons
from torch import nn

from lsa_train.analysis import analyze_perturbations, plot_layer_curves


def moons_model_a() -> nn.Module:
    """Model A: Linear(100)-ELU x3 - Linear(2) (two logits instead of the paper's one)."""
    return nn.Sequential(
        nn.Linear(2, 100), nn.ELU(), nn.Linear(100, 100), nn.ELU(), nn.Linear(100, 100), nn.ELU(), nn.Linear(100, 2)
    )


def main(output_dir: str = "outputs/demo") -> None:
    torch.manual_seed(313)
    features, labels = make_moons(n_samples=2000, noise=0.1, random_state=313)
    x = torch.tensor(features, dtype=torch.float32)
    x = (x - x.min(0).values) / (x.max(0).values - x.min(0).values)
    y = torch.tensor(labels)
    model = moons_model_a()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[:1500]), y[:1500]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[1500:]).argmax(1) == y[1500:]).float().mean().item()
    results = analyze_perturbations(
        model, x[1500:], y[1500:], perturbations=["gaussian", "salt", "pepper", "speckle"], eps=0.1
    )
    out = Path(output_dir)
    figure = plot_layer_curves(results, out / "lsa.png", title="Model A on two moons, eps = 0.1")
    print(f"held-out accuracy: {accuracy:.3f}")
    for name, result in results.items():
        result.to_csv(out / f"lsa_{name}.csv")
        print(result.to_table(), end="\n\n")
    print(f"figure: {figure}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
