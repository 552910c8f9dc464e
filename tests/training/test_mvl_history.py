"""The MVL-over-the-run heatmap written by ``MVLRefreshCallback``: its data, its files, TensorBoard."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from matplotlib import image
from torch import nn

from lsa_train.analysis import MVLHistoryTable, list_probes, plot_mvl_history
from lsa_train.analysis.figures import read_rgb
from lsa_train.analysis.history import mvl_history_figure, mvl_history_size
from lsa_train.attacks import PGD
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule, MVLRefreshCallback
from lsa_train.training import callbacks as callbacks_module


def module_and_callback(**kwargs) -> tuple[LSARegularizedModule, MVLRefreshCallback]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    module = LSARegularizedModule(model, attack=PGD(eps=0.1, steps=1), regularizer=LayerwiseRegularizer(0.1))
    return module, MVLRefreshCallback(num_samples=32, top_k=1, **kwargs)


def fit(tmp_path: Path, logger, callback, module, loaders, epochs: int) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False, max_epochs=epochs,
        logger=logger, callbacks=[callback], enable_checkpointing=False, limit_train_batches=2,
        limit_val_batches=1, accelerator="cpu",
    )
    trainer.fit(module, *loaders)
    return trainer


def logged_cm(metrics_csv: Path, names: list[str]) -> np.ndarray:
    """The ``lsa/cm/<probe>`` values the logger received, shape ``(L, refreshes)``."""
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get(f"lsa/cm/{names[0]}")]
    return np.array([[float(r[f"lsa/cm/{n}"]) for n in names] for r in rows]).T


def test_heatmap_data_equals_the_logged_cm(tmp_path, loaders, moons, monkeypatch):
    x, _ = moons
    drawn: list[np.ndarray] = []
    real = callbacks_module.plot_mvl_history

    def recording(table, *args, **kwargs):
        drawn.append(np.asarray(mvl_history_figure(table).axes[0].images[0].get_array()))
        return real(table, *args, **kwargs)

    monkeypatch.setattr(callbacks_module, "plot_mvl_history", recording)
    module, callback = module_and_callback()
    trainer = fit(tmp_path, L.pytorch.loggers.CSVLogger(tmp_path), callback, module, loaders, epochs=3)
    out = Path(trainer.log_dir, "lsa")
    names = ["1", "3"]
    logged = logged_cm(Path(trainer.log_dir, "metrics.csv"), names)
    assert logged.shape == (2, 3)  # fit start and the starts of epochs 1 and 2
    assert [d.shape for d in drawn] == [(2, 1), (2, 2), (2, 3)]  # redrawn at each refresh, one column more
    np.testing.assert_allclose(drawn[-1], logged, rtol=1e-6)
    table = MVLHistoryTable.read_csv(out / "mvl_history.csv")
    np.testing.assert_allclose(table.means, logged, rtol=1e-6)
    assert table.epochs == [0, 1, 2]
    assert [[names[i] for i in np.nonzero(table.mvl[:, r])[0]] for r in range(3)] == [
        h["mvl"] for h in callback.history
    ]
    # the README's line: the same heatmap from the callback's history, in a notebook
    path = plot_mvl_history(callback.history, tmp_path / "mvl.png", probe_names=list_probes(module.model, x[:1]))
    assert image.imread(path).shape == image.imread(out / "mvl_history.png").shape
    pixels = image.imread(out / "mvl_history.png")
    width, height = mvl_history_size(2, 3)
    assert pixels.shape[:2] == (round(height * 100), round(width * 100))
    assert pixels[..., :3].std() > 0.05  # not blank
    assert not list(out.glob(".*tmp*"))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_gets_the_same_images(tmp_path, loaders):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module, callback = module_and_callback()
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = fit(tmp_path, logger, callback, module, loaders, epochs=2)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert {"lsa/layers", "lsa/mvl_history"} <= set(events.Tags()["images"])
    heatmaps = events.Images("lsa/mvl_history")
    assert [e.step for e in heatmaps] == [h["step"] for h in callback.history]
    written = read_rgb(Path(trainer.log_dir, "lsa", "mvl_history.png"))
    png = tmp_path / "last_tb_image.png"
    png.write_bytes(heatmaps[-1].encoded_image_string)
    np.testing.assert_array_equal(read_rgb(png), written)  # pixel for pixel the file of the last refresh


def test_heatmap_starts_anew_after_a_probe_change(tmp_path):
    _, callback = module_and_callback(plot=False)
    callback.history = [
        {"epoch": 0, "step": 0, "mvl": ["old"], "probe_means": [0.1, 0.2, 0.3]},  # restored, other probes
        {"epoch": 1, "step": 5, "mvl": ["3"], "probe_means": [0.2, 0.4]},
        {"epoch": 2, "step": 9, "mvl": ["1"], "probe_means": [0.5, 0.1]},
    ]
    table = callback._history_table(["1", "3"])
    assert table.epochs == [1, 2] and table.means.tolist() == [[0.2, 0.5], [0.4, 0.1]]
    assert table.mvl.tolist() == [[False, True], [True, False]]
