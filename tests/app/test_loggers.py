"""``logger=mlflow`` and ``logger=wandb``: offline by default, inside the run folder, their configs pass the trust
checks, a missing package is one line before training, and the write door refuses their stores elsewhere."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from apptest_utils import compose_train
from omegaconf import OmegaConf

from lsa_train.app import builders, validation
from lsa_train.app.errors import ConfigError
from lsa_train.foreign import check_foreign_config
from lsa_train.trust import TrustPolicy, check_saved_config
from lsa_train.writes import WriteOutsideError, check_trainer_writes, remote_logger_notes

LOGGERS = {"mlflow": "MLFlowLogger", "wandb": "WandbLogger"}
#: A short real run (3 optimizer steps), no figures.
SHORT = [
    "trainer.max_epochs=1", "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", "regularizer.mvl.num_samples=16",
    "regularizer.mvl.plot=false", "attack.steps=2", "callbacks.rich_model_summary=null",
    "callbacks.rich_progress_bar=null", "torch_threads=1",
]


@pytest.mark.parametrize("name", sorted(LOGGERS))
def test_the_logger_configs_are_offline_inside_the_run_folder_and_pass_the_trust_checks(
    tmp_path: Path, name: str
) -> None:
    cfg = compose_train([f"logger={name}"], tmp_path / "run")
    node = cfg.logger[name]
    assert node._target_ == f"lightning.pytorch.loggers.{LOGGERS[name]}"
    if name == "mlflow":
        assert node.tracking_uri == f"sqlite:///{tmp_path / 'run'}/mlflow.db"
        assert node.artifact_location == f"{tmp_path / 'run'}/mlartifacts"
    else:
        assert node.offline is True and node.save_dir == str(tmp_path / "run")
    saved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    check_saved_config(OmegaConf.to_container(saved, resolve=False), TrustPolicy(), "config.yaml")
    # as a foreign run's config (read as data): the keys and interpolations are the ones conf/ has
    check_foreign_config(saved, TrustPolicy(), "run/.hydra/config.yaml", "not signed", ignore=("paths",))


@pytest.mark.parametrize(("key", "value"), [("logger.mlflow.tracking_uri", "file:/tmp/elsewhere"),
                                            ("logger.mlflow.artifact_location", "/tmp/elsewhere"),
                                            ("logger.wandb.offline", False)])
def test_a_foreign_config_may_not_send_a_logger_elsewhere(tmp_path: Path, key: str, value: object) -> None:
    cfg = compose_train([f"logger={key.split('.')[1]}"], tmp_path / "run")
    saved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.update(saved, key, value, force_add=True)
    with pytest.raises(ValueError, match=rf"sets {key}=.*only this command line may set"):
        check_foreign_config(saved, TrustPolicy(), "run/.hydra/config.yaml", "not signed", ignore=("paths",))


@pytest.mark.parametrize("name", sorted(LOGGERS))
def test_a_missing_package_is_one_line_before_training(tmp_path: Path, name: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # `import mlflow` fails, find_spec finds nothing
    cfg = compose_train([f"logger={name}", *SHORT], tmp_path / "run")
    expected = f"logger={name} needs the {name} package: pip install 'lsa-train[{name}]'"
    with pytest.raises(ConfigError, match=r"^" + expected.replace("[", r"\[").replace("]", r"\]")):
        validation.check_loggers(cfg.logger)
    from lsa_train.app.train import train

    with pytest.raises(ConfigError, match="needs the"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def _trainer(run_dir: Path, logger: object) -> SimpleNamespace:
    return SimpleNamespace(default_root_dir=str(run_dir), callbacks=[], loggers=[logger])


class MLFlowLogger:
    """What the write door reads of Lightning's MLFlowLogger (built without the mlflow package)."""

    def __init__(self, tracking_uri: str, artifact_location: str | None = None) -> None:
        self._tracking_uri, self._artifact_location = tracking_uri, artifact_location

    @property
    def save_dir(self) -> str | None:  # as Lightning's: the path of a file: URI
        return self._tracking_uri.removeprefix("file:") if self._tracking_uri.startswith("file:") else None


class WandbLogger:
    """What the write door reads of Lightning's WandbLogger (built without the wandb package)."""

    def __init__(self, save_dir: str | None, offline: bool = True) -> None:
        self.save_dir, self._offline = save_dir, offline


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda run, out: MLFlowLogger(f"file:{out}/mlruns"), "MLFlowLogger.save_dir"),
        (lambda run, out: MLFlowLogger(f"sqlite:///{out}/mlflow.db"), "MLFlowLogger.tracking_uri"),
        (lambda run, out: MLFlowLogger(f"file:{run}/mlruns", artifact_location=f"{out}/artifacts"),
         "MLFlowLogger.artifact_location"),
        (lambda run, out: WandbLogger(save_dir=str(out)), "WandbLogger.save_dir"),
        (lambda run, out: WandbLogger(save_dir=None), "WandbLogger has no save_dir"),
    ],
    ids=["mlflow-file", "mlflow-sqlite", "mlflow-artifacts", "wandb-save_dir", "wandb-none"],
)
def test_the_write_door_refuses_a_logger_store_outside_the_run_folder(tmp_path: Path, make, what: str) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(WriteOutsideError, match=what):
        check_trainer_writes(_trainer(run_dir, make(run_dir, tmp_path / "elsewhere")), run_dir)
    for kept in (MLFlowLogger(f"sqlite:///{run_dir}/mlflow.db", artifact_location=f"{run_dir}/artifacts"),
                 MLFlowLogger(f"file:{run_dir}/mlruns"), WandbLogger(save_dir=str(run_dir))):
        check_trainer_writes(_trainer(run_dir, kept), run_dir)


def test_loggers_that_send_to_a_server_are_named_in_the_summary() -> None:
    notes = remote_logger_notes([MLFlowLogger("https://mlflow.example.org"), WandbLogger("run", offline=False),
                                 MLFlowLogger("file:run/mlruns"), WandbLogger("run")])
    assert len(notes) == 2
    assert "tracking server 'https://mlflow.example.org'" in notes[0] and "W&B server (offline=false" in notes[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LOGGERS))
def test_an_offline_run_writes_its_logs_inside_the_run_folder(tmp_path: Path, name: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (pip install 'lsa-train[{name}]')")
    for variable in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    from lsa_train.app.train import train

    run_dir = tmp_path / "run"
    cfg = compose_train([f"logger={name}", *SHORT], run_dir)
    assert [type(lg).__name__ for lg in builders.build_loggers(cfg)] == [LOGGERS[name]]
    _, objects = train(cfg)
    assert not objects["summary"]["notes"] or all("server" not in n for n in objects["summary"]["notes"])
    outside = sorted(p.name for p in tmp_path.iterdir() if p.name != "run")
    assert outside == [], outside  # nothing in the working directory
    if name == "mlflow":
        with sqlite3.connect(run_dir / "mlflow.db") as db:
            logged = {key for (key,) in db.execute("SELECT DISTINCT key FROM metrics")}
        assert {"val/acc_pgd", "test/acc_pgd"} <= logged, logged
    else:
        runs = list((run_dir / "wandb").glob("offline-run-*"))
        assert runs and list(runs[0].glob("*.wandb"))
