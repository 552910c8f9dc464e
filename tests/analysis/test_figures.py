"""The analysis figures: MVL-over-a-run heatmap, per-probe CM distribution, feature-map grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import image
from matplotlib.patches import Rectangle
from torch import nn

from lsa_train.analysis import (
    LSAResult,
    MVLHistoryTable,
    analyze,
    plot_cm_distribution,
    plot_feature_maps,
    plot_mvl_history,
)
from lsa_train.analysis.distribution import cm_distribution_figure
from lsa_train.analysis.feature_maps import capture_feature_maps, feature_map_figure
from lsa_train.analysis.history import mvl_history_figure


def png_pixels(path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return image.imread(path)


def assert_not_blank(pixels: np.ndarray) -> None:
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05, "the figure is (nearly) one colour"
    assert (rgb.std(axis=2) > 0.1).mean() > 0.01, "the figure has (almost) no coloured pixels"


def resnet50_like_names(n: int = 60) -> list[str]:
    """Probe names shaped like a ResNet-50's: long, dotted, with call suffixes."""
    names = ["relu:1"]
    for layer, blocks in enumerate((3, 4, 6, 3), start=1):
        for block in range(blocks):
            names += [f"layer{layer}.{block}.relu:{call}" for call in (1, 2, 3)]
            names.append(f"layer{layer}.{block}.add")
    assert len(names) >= n
    return names[:n]


def synthetic_history(names: list[str], refreshes: int, seed: int = 0) -> list[dict]:
    generator = np.random.default_rng(seed)
    history = []
    for r in range(refreshes):
        means = generator.gamma(2.0, 0.1, size=len(names)) * (1 + np.arange(len(names)) / len(names))
        top = np.argsort(-means)[:2]
        history.append({"epoch": r, "step": 10 * r, "mvl": [names[i] for i in sorted(top)],
                        "probe_means": means.tolist()})
    return history


def test_mvl_history_heatmap_for_60_probes(tmp_path):
    names = resnet50_like_names(60)
    history = synthetic_history(names, refreshes=5)
    path = plot_mvl_history(history, tmp_path / "lsa" / "mvl_history.png", probe_names=names,
                            csv_path=tmp_path / "lsa" / "mvl_history.csv")
    pixels = png_pixels(path)
    assert pixels.shape[:2] == (1380, 600)  # mvl_history_size(60, 5) = (6, 13.8) inches at 100 dpi
    assert_not_blank(pixels)
    assert not list(path.parent.glob(".*tmp*"))

    table = MVLHistoryTable.read_csv(tmp_path / "lsa" / "mvl_history.csv")
    expected = np.array([h["probe_means"] for h in history]).T
    np.testing.assert_array_equal(table.means, expected)  # the CSV keeps every digit
    assert table.probe_names == names and table.epochs == [0, 1, 2, 3, 4]
    assert [[names[i] for i in np.nonzero(table.mvl[:, r])[0]] for r in range(5)] == [h["mvl"] for h in history]

    figure = mvl_history_figure(MVLHistoryTable.from_history(history, names))
    axes = figure.axes[0]
    np.testing.assert_allclose(axes.images[0].get_array(), expected)
    marked = {(round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in axes.patches if isinstance(p, Rectangle)}
    assert marked == {(int(i), int(r)) for i, r in zip(*np.nonzero(table.mvl))}
    assert [t.get_text() for t in axes.get_yticklabels()] == names  # every probe labelled
    assert min(t.get_fontsize() for t in axes.get_yticklabels()) >= 5


def test_mvl_history_rejects_bad_history(tmp_path):
    names = ["a", "b"]
    with pytest.raises(ValueError, match="empty"):
        plot_mvl_history([], tmp_path / "x.png", probe_names=names)
    with pytest.raises(ValueError, match="has 3 probe means, expected 2"):
        MVLHistoryTable.from_history([{"epoch": 0, "step": 0, "mvl": [], "probe_means": [1, 2, 3]}], names)
    with pytest.raises(ValueError, match="MVL probe 'c'"):
        MVLHistoryTable.from_history([{"epoch": 0, "step": 0, "mvl": ["c"], "probe_means": [1, 2]}], names)
    with pytest.raises(ValueError, match="needs probe_names"):
        plot_mvl_history([{"epoch": 0, "step": 0, "mvl": [], "probe_means": [1, 2]}], tmp_path / "x.png")


def test_cm_distribution_for_60_probes(tmp_path):
    names = resnet50_like_names(60)
    cm = torch.rand(32, 60, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 2.0, 60)
    result = LSAResult(names, cm, mvl=[57, 59], perturbation="pgd", eta=1.0)
    path = plot_cm_distribution(result, tmp_path / "dist.png")
    pixels = png_pixels(path)
    assert pixels.shape[:2] == (500, 1800)  # cm_distribution_size(60) = (18, 5) inches
    assert_not_blank(pixels)
    axes = cm_distribution_figure(result).axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == names
    red = [i for i, patch in enumerate(axes.patches) if patch.get_facecolor()[0] > 0.7]
    assert red == [57, 59]  # the MVL boxes stand out


class ScaledChannels(nn.Module):
    """A conv whose output channel c is (c + 1) times channel 0: channel 3 changes most."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            kernel = torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(0))
            self.conv.weight.copy_(torch.cat([kernel * (c + 1) for c in range(4)]))
        self.act = nn.ReLU()
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).flatten(1))


def test_feature_maps_show_the_most_changed_channels(tmp_path):
    torch.manual_seed(0)
    model = ScaledChannels().train()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    captured = capture_feature_maps(model, x[:3], x_adv[:3], ["conv", "act"])
    assert model.training  # mode restored
    conv = captured.views[0]
    assert conv.probe == "conv" and conv.is_map and conv.clean.shape == (3, 4, 8, 8)
    assert conv.top_changes(2).tolist() == [[3, 2]] * 3
    with torch.no_grad():
        torch.testing.assert_close(conv.perturbed, model.conv(x_adv[:3]))
        assert captured.perturbed_pred.tolist() == model(x_adv[:3]).argmax(1).tolist()

    figure = feature_map_figure(conv, captured, num_channels=2, labels=labels[:3], perturbation="pgd")
    titles = [sub._suptitle.get_text() for sub in figure.subfigs]
    clean_pred = captured.clean_pred.tolist()
    assert titles[0] == f"sample 0 (label 0): clean pred {clean_pred[0]}, perturbed pred {captured.perturbed_pred[0]}"
    first_row = [a.get_title() for a in figure.subfigs[0].axes]
    assert first_row[:2] == ["ch 3 clean", "ch 3 pgd"] and first_row[2].startswith("|diff| max")
    assert first_row[3:5] == ["ch 2 clean", "ch 2 pgd"]

    paths = plot_feature_maps(model, x, x_adv, tmp_path / "maps", probes=["conv", "act"], labels=labels,
                              num_samples=2, num_channels=2, perturbation="pgd")
    assert [p.name for p in paths] == ["00_conv.png", "01_act.png"]
    for path in paths:
        pixels = png_pixels(path)
        assert pixels.shape[:2] == (460, 880)  # feature_map_size: (1 + 3.9 * 2, 1 + 1.8 * 2) inches
        assert_not_blank(pixels)


def test_feature_maps_of_vector_layers_are_bars(tmp_path, mlp):
    x = torch.rand(5, 2, generator=torch.Generator().manual_seed(0))
    x_adv = x + 0.05
    result = analyze(mlp, x, x_adv, top_k=1)
    (path,) = plot_feature_maps(mlp, x, x_adv, tmp_path, probes=result, num_samples=2, num_features=8)
    assert path.name == f"00_{result.mvl_names[0]}.png"
    pixels = png_pixels(path)
    assert pixels.shape[:2] == (500, 600)  # bars: (clamp(2 + 0.5 * 8, 6, 14), 1 + 2 * 2) inches
    assert_not_blank(pixels)
    captured = capture_feature_maps(mlp, x[:2], x_adv[:2], result)
    view = captured.views[0]
    changes = (view.perturbed - view.clean).abs()
    top = view.top_changes(8)
    assert torch.equal(changes.gather(1, top), changes.sort(dim=1, descending=True).values[:, :8])


@pytest.mark.parametrize(("kwargs", "message"), [({"num_samples": 0}, "num_samples must be an integer >= 1, got 0"),
                                                 ({"num_channels": 1.5}, "num_channels must be an integer >= 1")])
def test_feature_maps_reject_bad_counts(tmp_path, mlp, kwargs, message):
    x = torch.rand(3, 2)
    with pytest.raises(ValueError, match=message):
        plot_feature_maps(mlp, x, x, tmp_path, probes="activations", **kwargs)


def test_readme_library_figure_lines(tmp_path, monkeypatch, cnn, images):
    from lsa_train.perturbations import perturb

    monkeypatch.chdir(tmp_path)
    model, x = cnn, images
    x_noisy = perturb("gaussian", x, 0.1, generator=torch.Generator().manual_seed(0))
    result = analyze(model, x, x_noisy, eta=1.0)
    # the README's lines
    plot_cm_distribution(result, "cm_boxes.png")
    plot_feature_maps(model, x[:4], x_noisy[:4], "maps/", probes=result)
    assert png_pixels(tmp_path / "cm_boxes.png").shape[:2] == (500, 600)
    maps = sorted((tmp_path / "maps").glob("*.png"))
    shown = result.mvl_names or [result.probe_names[int(result.probe_means.argmax())]]
    assert [p.name for p in maps] == [f"{i:02d}_{name.replace(':', '_')}.png" for i, name in enumerate(shown)]
