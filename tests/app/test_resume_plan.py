"""The plan of a resume, in process: the run's group choices become the job's (the summary names what the
run trains), and the saved config may not send checkpoints, logs or figures outside the run folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from lsa_train.app.errors import ConfigError
from lsa_train.app.overrides import hydra_choice
from lsa_train.app.resume import check_write_destinations, describe, plan_resume
from lsa_train.trust import TrustPolicy


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def _run_folder(run_dir: Path, overrides: list[str]) -> Path:
    """``.hydra/config.yaml`` and ``.hydra/hydra.yaml`` as a run of ``overrides`` writes them, and a
    checkpoint file (plan_resume reads only the folder); returns the checkpoint path."""
    cfg = _compose(overrides)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(cfg.hydra, resolve=False)}),
                   run_dir / ".hydra" / "hydra.yaml")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"epoch": 0, "global_step": 1, "state_dict": {}}, ckpt)
    return ckpt


@pytest.fixture
def job() -> Iterator[None]:
    """Leaves no Hydra job config behind for other tests."""
    yield
    HydraConfig.instance().cfg = None  # type: ignore[assignment]


def _as_job(overrides: list[str], run_dir: Path) -> DictConfig:
    """The config of ``python -m lsa_train <overrides>`` inside its Hydra job (runtime choices set)."""
    cfg = _compose(overrides)
    OmegaConf.update(cfg, "hydra.runtime.output_dir", str(run_dir), force_add=True)
    HydraConfig.instance().set_config(cfg)
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def test_a_resume_takes_the_runs_group_choices_except_the_switched_ones(tmp_path: Path, job: None) -> None:
    ckpt = _run_folder(tmp_path / "run", ["data=moons", "model=mlp_a", "logger=csv"])
    cli = _as_job([f"ckpt_path={ckpt}", "logger=none", "trainer.max_epochs=3"], tmp_path / "run")
    assert hydra_choice("data") == "digits"  # this command line's default, before the plan
    plan = plan_resume(cli, ckpt, TrustPolicy())
    assert plan is not None and plan.switched_groups == {"logger": "none"}
    assert (hydra_choice("data"), hydra_choice("model"), hydra_choice("logger")) == ("moons", "mlp_a", "none")
    assert plan.cfg.trainer.max_epochs == 3 and plan.cfg.data._target_.endswith("MoonsDataModule")


def _saved(tmp_path: Path, **values: object) -> tuple[DictConfig, Path]:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    cfg = OmegaConf.masked_copy(_compose([]), ["paths", "trainer", "callbacks", "logger", "regularizer"])
    cfg.paths.output_dir = str(run_dir)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg, run_dir


def test_the_default_destinations_lie_in_the_run_folder(tmp_path: Path) -> None:
    cfg, run_dir = _saved(tmp_path)
    check_write_destinations(cfg, run_dir, [], {}, run_dir / ".hydra" / "config.yaml")


@pytest.mark.parametrize(("key", "value"), [
    ("callbacks.last_checkpoint.dirpath", "/OUT/ckpts"),
    ("logger.csv.save_dir", "/OUT"),
    ("trainer.default_root_dir", "${paths.output_dir}/../elsewhere"),
    ("regularizer.mvl.dirpath", "/OUT/lsa"),
    ("callbacks.model_checkpoint.filename", "../../OUT/epoch"),
])
def test_a_saved_destination_outside_the_run_folder_is_refused_unless_the_command_line_names_it(
        tmp_path: Path, key: str, value: str) -> None:
    value = value.replace("/OUT", str(tmp_path / "outside"))
    cfg, run_dir = _saved(tmp_path, **{key: value})
    base = run_dir / ".hydra" / "config.yaml"
    with pytest.raises(ConfigError, match=rf"sets {key}=.*outside the run folder .*give {key}=<path>"):
        check_write_destinations(cfg, run_dir, [], {}, base)
    check_write_destinations(cfg, run_dir, [f"{key}={value}"], {}, base)  # this command line's own choice
    group = key.split(".")[0]
    check_write_destinations(cfg, run_dir, [], {group: "other"}, base)  # a switched group comes from conf/
    assert not (tmp_path / "outside").exists()


def test_a_group_switch_keeps_the_runs_own_values_and_lists_what_it_changed(tmp_path: Path, job: None) -> None:
    run = ["trainer.max_epochs=3", "+trainer.gradient_clip_val=1.0", "trainer.precision=16-mixed",
           "callbacks.model_checkpoint.monitor=val/acc_clean", "callbacks.rich_progress_bar=null"]
    ckpt = _run_folder(tmp_path / "run", run)
    cli = _as_job([f"ckpt_path={ckpt}", "trainer=gpu_bf16", "trainer.devices=2", "logger=tensorboard"],
                  tmp_path / "run")
    plan = plan_resume(cli, ckpt, TrustPolicy())
    assert plan is not None and plan.switched_groups == {"trainer": "gpu_bf16", "logger": "tensorboard"}
    trainer = plan.cfg.trainer
    # what gpu_bf16 is for: the device, bf16 autocast, autotuning; the named key from this command line
    assert (trainer.accelerator, trainer.precision, trainer.benchmark, trainer.devices) == ("gpu", "bf16-mixed",
                                                                                             True, 2)
    # the run's own values: not reset to the group's defaults (max_epochs 20, no clipping)
    assert (trainer.max_epochs, trainer.gradient_clip_val) == (3, 1.0)
    assert plan.cfg.callbacks.model_checkpoint.monitor == "val/acc_clean"  # callbacks not switched
    assert "csv" not in plan.cfg.logger and plan.cfg.logger.tensorboard.name == "tensorboard"
    changed = {c["key"]: (c["was"], c["now"]) for c in plan.group_changes}
    assert changed == {"trainer.accelerator": ("cpu", "gpu"), "trainer.precision": ("16-mixed", "bf16-mixed"),
                       "trainer.benchmark": ("(unset)", "True"), "logger.csv": ("{...}", "(unset)"),
                       "logger.tensorboard": ("(unset)", "{...}")}
    line = describe(plan, ckpt)
    assert line is not None and "trainer.precision: 16-mixed -> bf16-mixed" in line and "other values kept" in line
    assert plan.summary()["group_changes"] == plan.group_changes


def test_a_later_resume_starts_from_the_groups_an_earlier_one_switched(tmp_path: Path, job: None) -> None:
    ckpt = _run_folder(tmp_path / "run", ["callbacks=none"])
    # the run had no callbacks; switching to the default set brings conf/'s callbacks in, named keys on top
    cli = _as_job([f"ckpt_path={ckpt}", "callbacks=default", "++callbacks.model_checkpoint.every_n_epochs=2"],
                  tmp_path / "run")
    plan = plan_resume(cli, ckpt, TrustPolicy())
    assert plan is not None and plan.cfg.callbacks.model_checkpoint.monitor == "val/acc_pgd"
    assert plan.cfg.callbacks.model_checkpoint.every_n_epochs == 2
    # and back: the second resume starts from the first one's record (its callbacks are 'default' now)
    plan.record()
    saved = plan.cfg.callbacks
    with open_dict(saved):
        saved.model_checkpoint.monitor = "val/acc_clean"  # as if the first resume had set it
    OmegaConf.save(plan.cfg, sorted((tmp_path / "run" / ".hydra" / "resumes").glob("*/config.yaml"))[-1])
    cli = _as_job([f"ckpt_path={ckpt}", "callbacks=default"], tmp_path / "run")
    again = plan_resume(cli, ckpt, TrustPolicy())
    assert again is not None and again.switched_groups == {}  # the run's own choice now, repeated
    assert again.cfg.callbacks.model_checkpoint.monitor == "val/acc_clean"


def test_a_switch_of_a_group_the_run_does_not_record_is_refused(tmp_path: Path, job: None) -> None:
    ckpt = _run_folder(tmp_path / "run", [])
    (tmp_path / "run" / ".hydra" / "hydra.yaml").unlink()
    cli = _as_job([f"ckpt_path={ckpt}", "trainer=gpu"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^trainer=gpu: .* does not record the run's trainer choice.*"
                                          r"give the trainer.<key>=<value> settings"):
        plan_resume(cli, ckpt, TrustPolicy())
