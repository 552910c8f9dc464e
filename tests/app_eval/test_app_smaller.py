"""Smaller promises of the apps: download before checking the data, torch threads by model size."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from evaltest_utils import compose_app
from torch.utils.data import DataLoader, TensorDataset

from lsa_train.app import checkpoint_loading
from lsa_train.app.errors import ConfigError
from lsa_train.app.pipeline import SMALL_MODEL_PARAMETERS, resolve_torch_threads
from lsa_train.models import create_model

PREPARED: list[str] = []


class DownloadingData(L.LightningDataModule):
    """A data module whose files appear only through ``prepare_data`` (as torchvision's with download=True)."""

    num_classes = 2

    def __init__(self, root: str, download: bool = False) -> None:
        super().__init__()
        self.root, self.download = Path(root), download

    def prepare_data(self) -> None:
        PREPARED.append(str(self.root))
        (self.root / "data.pt").write_bytes(b"x")

    def check_available(self) -> None:
        if not (self.root / "data.pt").exists():
            raise FileNotFoundError(f"no data in {self.root}; set data.download=true")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.rand(4, 3), torch.tensor([0, 1, 0, 1])), batch_size=2)


def test_evaluate_downloads_before_checking_the_data(tmp_path: Path) -> None:
    cfg = compose_app("evaluate", [
        "model=mlp_a", "data=custom", f"data._target_={__name__}.DownloadingData", f"+data.root={tmp_path}",
        "+data.download=true",
    ], tmp_path / "out")
    run = checkpoint_loading.load_for_app(cfg)
    assert [str(tmp_path)] == PREPARED and (tmp_path / "data.pt").is_file()
    assert run.model(torch.rand(5, 3)).shape == (5, 2)  # mlp_a sized from the first batch: 3 features, 2 classes


def test_torch_threads_auto_follows_the_model_size() -> None:
    small = create_model("cnn_b", num_classes=10, in_channels=1, input_size=8)
    big = create_model("resnet18", num_classes=10)
    assert sum(p.numel() for p in small.parameters()) < SMALL_MODEL_PARAMETERS
    assert resolve_torch_threads("auto", small) == 1
    assert resolve_torch_threads("auto", big) is None  # torch's default: all cores
    assert resolve_torch_threads(3, big) == 3 and resolve_torch_threads(None, small) is None


def test_a_random_grey_stem_keeps_torchvisions_init_scale() -> None:
    torch.manual_seed(0)
    rgb = create_model("tv:resnet18", num_classes=10, in_channels=3).conv1.weight
    grey = create_model("tv:resnet18", num_classes=10, in_channels=1).conv1.weight
    assert grey.shape == (64, 1, 7, 7)
    ratio = float(grey.detach().std()) / float(rgb.detach().std())
    assert abs(ratio - 1) < 0.1  # Kaiming fan_out: the scale does not depend on in_channels


def test_another_data_group_with_ckpt_path_says_how_to_evaluate_on_other_data(tmp_path: Path) -> None:
    # with ckpt_path the run's data is rebuilt; a data group of this command line would be ignored
    cfg = compose_app("evaluate", [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", "data=moons"],
                      tmp_path / "out")
    with pytest.raises(ConfigError, match=r"^data=moons: with ckpt_path the run's own data is rebuilt.*"
                                          r"model\.checkpoint=<the \.ckpt> instead of ckpt_path"):
        checkpoint_loading.load_for_app(cfg)


def test_evaluate_with_threads_auto_runs_a_small_model_on_one_thread_and_gives_the_count_back(
        tmp_path: Path) -> None:
    from lsa_train.app.evaluate import evaluate

    fast = ["model=cnn_b", "data=digits", "pgd.eps=0.1", "max_samples=16", "pgd.steps=2", "fgsm.eps_grid=[0]",
            "autoattack.enabled=false", "masking.enabled=false"]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # auto used to leave torch's default in evaluate/analyze (the model was not known yet)
        report = evaluate(compose_app("evaluate", [*fast, "torch_threads=auto"], tmp_path / "auto"))
        assert report.metadata["torch_threads"] == 1 and torch.get_num_threads() == 2
        report = evaluate(compose_app("evaluate", fast, tmp_path / "default"))  # null: torch's default
        assert report.metadata["torch_threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_a_missing_checkpoint_names_the_checkpoints_that_are_there(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("epoch_000.ckpt", "last.ckpt"):
        (folder / name).write_bytes(b"x")
    for given in (tmp_path / "run", folder / "lats.ckpt"):  # a run dir, a misspelled file
        names = re.escape(f"checkpoints there: {folder / 'last.ckpt'}, {folder / 'epoch_000.ckpt'}")
        with pytest.raises(ConfigError, match=names + "$"):
            checkpoint_loading.check_ckpt_file(given)
    with pytest.raises(ConfigError, match=r"does not exist .*such as <run dir>/checkpoints/last\.ckpt$"):
        checkpoint_loading.check_ckpt_file(tmp_path / "elsewhere" / "x.ckpt")
