"""Every config group option composes, and the offline-capable ones instantiate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch
from apptest_utils import compose_train
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lsa_train.app import builders, validation
from lsa_train.app.overrides import derive_attack_alpha, run_first_overrides
from lsa_train.attacks import APGD, FGSM, FGSMRS, PGD, PGDL2, MARTAttack, NoAttack, TRADESAttack

CONF = Path(__file__).resolve().parents[2] / "conf"


def options(group: str) -> list[str]:
    """The options of a config group, from the YAML files."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_its_options() -> None:
    assert options("data") == [
        "cifar10", "cifar100", "custom", "digits", "fashion_mnist", "imagefolder", "mnist", "moons", "svhn", "tensors",
    ]
    assert options("model") == [
        "cnn_b", "custom", "mlp_a", "preact_resnet18", "resnet18", "robustbench", "timm", "tv", "vgg19", "wrn28_10",
        "wrn34_10",
    ]
    assert options("attack") == ["apgd", "fgsm", "fgsm_rs", "mart", "none", "pgd", "pgd_l2", "trades"]
    assert options("regularizer") == ["lsa", "none"]
    assert set(options("trainer")) >= {"default", "cpu", "gpu", "ddp", "debug"}
    assert set(options("experiment")) == {
        "moons_model_a", "digits_model_b", "mnist_model_b", "cifar10_vgg19", "cifar10_wrn34_10",
        "cifar10_preact_resnet18_pgd",
    }


def test_default_config(tmp_path: Path) -> None:
    cfg = compose_train([], tmp_path)
    assert cfg.seed == 313
    assert cfg.optimized_metric == "val/acc_pgd"
    assert cfg.ckpt_path is None
    assert cfg.data._target_.endswith("DigitsDataModule")
    assert cfg.model.name == "cnn_b"
    assert cfg.attack._target_.endswith(".PGD") and cfg.attack.base_loss.value == "ce"
    assert cfg.regularizer["lambda"] == 0.1 and cfg.regularizer.mvl.mode.value == "auto"
    assert cfg.optimizer._partial_ is True
    assert cfg.callbacks.model_checkpoint.dirpath == str(tmp_path / "checkpoints")
    assert cfg.regularizer.mvl.dirpath == str(tmp_path / "lsa")
    assert cfg.hydra.run.dir.startswith("${paths.log_dir}/${task_name}/runs/") or "runs" in cfg.hydra.run.dir
    assert "sweep_summary" in cfg.hydra.callbacks


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_instantiate(tmp_path: Path, name: str) -> None:
    cfg = compose_train([f"data={name}"], tmp_path)
    user_key = {"custom": "_target_", "imagefolder": "root", "tensors": "path"}.get(name)
    if user_key is not None:  # built in tests/data and tests/app/test_own_model_and_data.py
        assert OmegaConf.is_missing(cfg.data, user_key)
        return
    dm = builders.build_datamodule(cfg)
    assert dm.num_classes >= 2 and len(dm.input_shape) in (1, 3)
    if name in ("moons", "digits"):  # offline: load and read a batch
        dm.setup("fit")
        x, _ = next(iter(dm.train_dataloader()))
        assert tuple(x.shape[1:]) == tuple(dm.input_shape) and float(x.min()) >= 0 and float(x.max()) <= 1
    else:  # torchvision: facts known without files, and a clear error since nothing is on disk
        assert cfg.data.download is False
        with pytest.raises(FileNotFoundError, match=r"data\.download=true"):
            dm.check_available()


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_instantiate(tmp_path: Path, name: str) -> None:
    """Small models on the digits, the big ones (CIFAR-10 shapes, no data needed) just built and run once."""
    big = name in ("vgg19", "wrn28_10", "wrn34_10", "preact_resnet18")
    if name in ("custom", "timm", "robustbench"):  # need a user value: tests/app/test_own_model_and_data.py
        cfg = compose_train([f"model={name}"], tmp_path)
        assert OmegaConf.is_missing(cfg.model, "_target_" if name == "custom" else "name")
        return
    cfg = compose_train([f"model={name}", f"data={'cifar10' if big else 'digits'}"], tmp_path)
    dm = builders.build_datamodule(cfg)
    model, kwargs = builders.build_model(cfg, dm, trust=False)
    assert kwargs["num_classes"] == dm.num_classes and kwargs["in_channels"] == dm.input_shape[0]
    with torch.inference_mode():
        validation.check_model_input(model, cfg.model.name, dm.input_shape, dm.num_classes)


def test_model_input_check_keeps_each_submodule_mode() -> None:
    """The dry forward runs in eval mode and gives every submodule its own mode back: a BatchNorm the
    user froze in eval stays in eval (``model.train(was_training)`` would switch it to train)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    model.train()
    model[1].eval()
    running_mean = model[1].running_mean.clone()
    validation.check_model_input(model, "frozen-bn", (4,), 3)
    assert model.training and model[0].training and model[2].training
    assert not model[1].training
    assert torch.equal(model[1].running_mean, running_mean)


@pytest.mark.parametrize(
    ("overrides", "alpha", "derived"),
    [
        (["attack.eps=0.2"], 0.06, True),                             # pgd.yaml: alpha 0.03 at eps 0.1
        (["attack.eps=0.2", "attack.alpha=0.03"], 0.03, False),      # both named: kept as given
        (["attack.eps=0.2", "attack.alpha=0.05"], 0.05, False),
        (["attack.alpha=0.05"], 0.05, False),
        ([], 0.03, False),                                           # the file's own eps: its own step
        (["attack=fgsm_rs", "attack.eps=0.2"], 0.25, True),          # Wong et al.'s 1.25 x eps kept
        (["attack=pgd_l2", "attack.eps=1.0"], 0.3, True),
        (["attack=trades", "attack.eps=0.05"], 0.015, True),
        (["experiment=cifar10_preact_resnet18_pgd"], 2 / 255, False),  # preset sets both
        (["attack=apgd", "attack.eps=0.2"], None, False),              # step-size free: nothing to derive
        (["attack.eps=0"], 0.03, False),                               # no budget: nothing to scale
    ],
)
def test_alpha_follows_a_changed_eps_unless_named(
    tmp_path: Path, overrides: list[str], alpha: float | None, derived: bool
) -> None:
    cfg = compose_train(overrides, tmp_path)
    note = derive_attack_alpha(cfg.attack, overrides)
    assert (note is not None) == derived
    if alpha is None:
        assert "alpha" not in cfg.attack
        return
    if derived:
        assert note.startswith(f"attack.alpha={alpha:.6g} derived for attack.eps={cfg.attack.eps:g}")
    attack, _ = builders.build_attack(cfg)
    assert attack.alpha == pytest.approx(alpha)


def test_a_resume_derives_alpha_as_its_first_start_did(tmp_path: Path) -> None:
    """A resume's config comes from the run's saved one (alpha as in the file): the run's first command line
    decides whether alpha was named."""
    hydra_dir = tmp_path / "run" / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text("- attack.eps=0.2\n- attack.alpha=0.03\n")
    cfg = compose_train(["attack.eps=0.2"], tmp_path)
    first = run_first_overrides(tmp_path / "run")
    assert first == ["attack.eps=0.2", "attack.alpha=0.03"]
    assert derive_attack_alpha(cfg.attack, [*first, "trainer.max_epochs=3"]) is None
    assert cfg.attack.alpha == pytest.approx(0.03)
    (hydra_dir / "overrides.yaml").write_text("- attack.eps=0.2\n")
    assert derive_attack_alpha(cfg.attack, run_first_overrides(tmp_path / "run"))
    assert cfg.attack.alpha == pytest.approx(0.06)


def test_model_keys_from_data_can_be_overridden(tmp_path: Path) -> None:
    cfg = compose_train(["data=moons", "model=mlp_a", "model.hidden=16"], tmp_path)
    model, kwargs = builders.build_model(cfg, builders.build_datamodule(cfg), trust=False)
    assert kwargs["input_size"] is None and kwargs["in_channels"] == 2 and kwargs["mean"] is None
    assert model(torch.zeros(3, 2)).shape == (3, 2)


EXPECTED_ATTACKS = {
    "none": (NoAttack, "normal"), "fgsm": (FGSM, "ce"), "fgsm_rs": (FGSMRS, "ce"), "pgd": (PGD, "ce"),
    "pgd_l2": (PGDL2, "ce"), "apgd": (APGD, "ce"), "trades": (TRADESAttack, "trades"),
    "mart": (MARTAttack, "mart"),
}


@pytest.mark.parametrize("name", options("attack"))
def test_attack_configs_instantiate(tmp_path: Path, name: str) -> None:
    cfg = compose_train([f"attack={name}"], tmp_path)
    attack, base_loss = builders.build_attack(cfg)
    cls, loss = EXPECTED_ATTACKS[name]
    assert type(attack) is cls and base_loss == loss
    assert cfg.attack.eval_eps > 0  # robust validation accuracy is measured for every attack


@pytest.mark.parametrize("name", options("regularizer"))
def test_regularizer_configs(tmp_path: Path, name: str) -> None:
    cfg = compose_train([f"regularizer={name}"], tmp_path)
    parts = builders.build_regularizer(cfg)
    if name == "lsa":
        assert parts.regularizer is not None and parts.regularizer.gamma == 0.1 and parts.callback is not None
    else:
        assert parts.regularizer is not None and parts.regularizer.is_zero and parts.callback is None


@pytest.mark.parametrize(
    ("overrides", "callback", "every", "fixed"),
    [
        (["regularizer.mvl.mode=auto", "regularizer.mvl.every_n_epochs=2"], True, 2, None),
        (["regularizer.mvl.mode=once"], True, 10**9, None),
        (["regularizer.mvl.mode=fixed", "regularizer.mvl.layers=[2]"], True, 1, [2]),
        (["regularizer.mvl.mode=fixed", "regularizer.mvl.layers=[2]", "regularizer.mvl.log_analysis=false"],
         False, None, None),
    ],
)
def test_mvl_modes(tmp_path: Path, overrides: list[str], callback: bool, every: int | None, fixed: list | None) -> None:
    parts = builders.build_regularizer(compose_train(overrides, tmp_path))
    assert (parts.callback is not None) is callback
    if callback:
        assert parts.callback.every_n_epochs == every and parts.callback.fixed == fixed
    if "regularizer.mvl.mode=fixed" in overrides:
        assert parts.mvl == [2]


@pytest.mark.parametrize(
    ("overrides", "kwargs"),
    [
        ([], {"steps": 5}),  # {} in the config means the callback's default
        (["+regularizer.mvl.perturbation_kwargs.alpha=0.01"], {"steps": 5, "alpha": 0.01}),
        (["+regularizer.mvl.perturbation_kwargs.steps=10"], {"steps": 10}),
    ],
)
def test_refresh_attack_settings(tmp_path: Path, overrides: list[str], kwargs: dict) -> None:
    parts = builders.build_regularizer(compose_train(overrides, tmp_path))
    assert parts.callback is not None
    assert parts.callback.attack_kwargs == kwargs and parts.callback.num_samples == 64


def test_checkpoint_clean_reaches_the_regularizer(tmp_path: Path) -> None:
    assert not builders.build_regularizer(compose_train([], tmp_path)).regularizer.checkpoint_clean
    parts = builders.build_regularizer(compose_train(["regularizer.checkpoint_clean=true"], tmp_path))
    assert parts.regularizer.checkpoint_clean


def test_speed_switches_reach_the_module(tmp_path: Path) -> None:
    cfg = compose_train(["model=cnn_b", "module.channels_last=true", "module.compile_model={backend: eager}"],
                        tmp_path)
    dm = builders.build_datamodule(cfg)
    model, _ = builders.build_model(cfg, dm, trust=False)
    attack, base_loss = builders.build_attack(cfg)
    module = builders.build_module(cfg, model, attack, base_loss, builders.build_regularizer(cfg), dm.num_classes)
    assert module.channels_last and module.compile_kwargs == {"backend": "eager"}
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_optimizer_and_scheduler_partials(tmp_path: Path) -> None:
    cfg = compose_train(["optimizer=sgd", "scheduler=multistep"], tmp_path)
    optimizer = builders._instantiate(cfg.optimizer, "optimizer")([torch.nn.Parameter(torch.zeros(1))])
    scheduler = builders._instantiate(cfg.scheduler, "scheduler")(optimizer)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR)
    cfg = compose_train(["scheduler=cosine"], tmp_path)
    assert cfg.scheduler.T_max == cfg.trainer.max_epochs
    assert not compose_train(["scheduler=none"], tmp_path).scheduler


@pytest.mark.parametrize("name", ["default", "cpu", "debug"])
def test_cpu_trainer_configs_instantiate(tmp_path: Path, name: str) -> None:
    cfg = compose_train([f"trainer={name}"], tmp_path)
    trainer = builders.build_trainer(cfg, callbacks=[], loggers=[])
    assert isinstance(trainer, L.Trainer)


@pytest.mark.parametrize("name", ["gpu", "gpu_bf16", "ddp"])
def test_gpu_trainer_configs_compose(tmp_path: Path, name: str) -> None:
    cfg = compose_train([f"trainer={name}"], tmp_path)
    assert cfg.trainer.accelerator == "gpu"
    if name == "gpu_bf16":
        assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.benchmark is True
    if not torch.cuda.is_available():
        with pytest.raises(validation.ConfigError, match=f"trainer={name}"):
            validation.check_trainer_device(cfg.trainer)


def test_callbacks_and_csv_logger_instantiate(tmp_path: Path) -> None:
    cfg = compose_train([], tmp_path)
    loggers = builders.build_loggers(cfg)
    callbacks = builders.build_callbacks(cfg, has_logger=bool(loggers))
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger"]
    assert {type(cb).__name__ for cb in callbacks} == {
        "ModelCheckpoint", "RNGStateCallback", "RichProgressBar", "RichModelSummary", "LearningRateMonitor",
    }
    assert not builders.build_loggers(compose_train(["logger=none"], tmp_path))
    assert not builders.build_callbacks(compose_train(["callbacks=none"], tmp_path), has_logger=True)
    no_logger = builders.build_callbacks(compose_train(["logger=none"], tmp_path), has_logger=False)
    assert "LearningRateMonitor" not in {type(cb).__name__ for cb in no_logger}


@pytest.mark.parametrize("name", ["tensorboard", "many"])
def test_tensorboard_loggers(tmp_path: Path, name: str) -> None:
    cfg = compose_train([f"logger={name}"], tmp_path)
    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        with pytest.raises(validation.ConfigError, match="tensorboard"):
            validation.check_loggers(cfg.logger)
        pytest.skip("tensorboard is not installed: only the clear error is checked")
    assert "TensorBoardLogger" in {type(lg).__name__ for lg in builders.build_loggers(cfg)}


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_configs(tmp_path: Path, name: str) -> None:
    cfg = compose_train([f"experiment={name}"], tmp_path)
    assert cfg.task_name == name
    dm = builders.build_datamodule(cfg)
    attack, _ = builders.build_attack(cfg)
    builders.build_regularizer(cfg)
    validation.check_regularizer(cfg.regularizer, cfg.attack)
    assert attack.eps == cfg.attack.eps
    if name.startswith(("moons", "digits")):  # the CPU ones: the model is built and checked too
        model, _ = builders.build_model(cfg, dm, trust=False)
        validation.check_model_input(model, cfg.model.name, dm.input_shape, dm.num_classes)
    if name == "cifar10_preact_resnet18_pgd":
        assert cfg.attack.eps == pytest.approx(8 / 255) and cfg.attack.alpha == pytest.approx(2 / 255)
        assert cfg.optimizer.lr == 0.1 and cfg.optimizer.weight_decay == 5e-4
        assert list(cfg.scheduler.milestones) == [100, 150] and cfg.trainer.max_epochs == 200
    if name == "moons_model_a":
        assert list(cfg.regularizer.mvl.layers) == [2]


@pytest.mark.parametrize(
    ("name", "plugin", "target"),
    [
        ("joblib", "hydra_joblib_launcher", "JoblibLauncher"),
        ("submitit_slurm", "hydra_submitit_launcher", "SlurmLauncher"),
    ],
)
def test_launcher_configs(tmp_path: Path, name: str, plugin: str, target: str) -> None:
    if importlib.util.find_spec(f"hydra_plugins.{plugin}") is None:
        pytest.skip(f"{plugin} is not installed (launcher={name} needs it)")
    cfg = compose_train([f"launcher={name}"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith(target)


def test_optuna_hparams_search(tmp_path: Path) -> None:
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        pytest.skip("hydra-optuna-sweeper is not installed (hparams_search=optuna needs it)")
    cfg = compose_train(["hparams_search=optuna"], tmp_path)
    assert set(cfg.hydra.sweeper.params) == {"regularizer.lambda", "attack.eps"}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("attack.epss=0.1", "epss"),
        ("attack.steps=1.5", "steps"),
        ("attack.norm=l3", "l3"),
        ("regularizer.mvl.mode=autoo", "autoo"),
        ("regularizer.lamda=0.2", "lamda"),
        ("model=foo", "model/foo"),
    ],
)
def test_hydra_rejects_typos_at_compose_time(tmp_path: Path, override: str, match: str) -> None:
    with pytest.raises(ConfigCompositionException, match=match):
        compose_train([override], tmp_path)


def test_schema_types_and_interpolated_eval_eps(tmp_path: Path) -> None:
    cfg = compose_train(["attack.eps=0.2"], tmp_path)
    assert cfg.attack.eval_eps == 0.2  # follows eps unless set
    assert OmegaConf.get_type(cfg.attack).__name__ == "PGDConf"
    assert OmegaConf.get_type(cfg.regularizer.mvl).__name__ == "MVLConf"


@pytest.fixture()
def torch_flags():
    """Restores the process-wide determinism flags that Lightning's Trainer sets."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark = saved[2]


@pytest.mark.parametrize(("deterministic", "autotune"), [(True, False), (False, True)])
def test_the_composed_trainer_gets_lightnings_determinism(tmp_path: Path, torch_flags, deterministic: bool,
                                                         autotune: bool) -> None:
    # trainer=gpu_bf16 asks for cuDNN autotuning; the default deterministic=true must win over it
    cfg = compose_train(["trainer=gpu_bf16", "trainer.accelerator=cpu", f"deterministic={deterministic}"], tmp_path)
    trainer = builders.build_trainer(cfg, [], [])
    assert trainer.precision == "bf16-mixed"
    assert torch.backends.cudnn.benchmark is autotune
    assert torch.are_deterministic_algorithms_enabled() is deterministic
    if deterministic:
        assert torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp", "debug", "gpu"])
def test_every_trainer_takes_a_precision(tmp_path: Path, trainer: str) -> None:
    cfg = compose_train([f"trainer={trainer}", "trainer.precision=bf16-mixed"], tmp_path)
    assert cfg.trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("name", ["pgd", "pgd_l2", "mart", "trades"])
def test_attack_clip_forward_reaches_the_attack_and_the_setting(tmp_path: Path, name: str) -> None:
    from lsa_train.app.pipeline import _setting

    default = compose_train([f"attack={name}"], tmp_path)
    assert builders.build_attack(default)[0].clip == "project" and "attack_clip" not in _setting(default, "ce")
    cfg = compose_train([f"attack={name}", "attack.clip=forward"], tmp_path)
    attack, _ = builders.build_attack(cfg)
    assert attack.clip == "forward"
    assert _setting(cfg, "ce")["attack_clip"] == "forward"  # the weakened attack is named in the report


@pytest.mark.parametrize(
    ("overrides", "match"),
    [(["attack.clip=inside"], "inside"), (["attack=fgsm", "attack.clip=forward"], "Could not override 'attack.clip'")],
)
def test_attack_clip_bad_values_fail_at_compose_time(tmp_path: Path, overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigCompositionException, match=match):
        compose_train(overrides, tmp_path)


def test_ema_callbacks_are_the_default_ones_plus_the_ema(tmp_path: Path) -> None:
    cfg = compose_train(["callbacks=ema", "callbacks.ema.decay=0.99"], tmp_path)
    callbacks = builders.build_callbacks(cfg, has_logger=True)
    default = builders.build_callbacks(compose_train([], tmp_path), has_logger=True)
    assert sorted(type(cb).__name__ for cb in callbacks) == sorted(
        [*(type(cb).__name__ for cb in default), "EMAWeightAveraging"])
    ema = next(cb for cb in callbacks if type(cb).__name__ == "EMAWeightAveraging")
    assert ema.decay == 0.99 and ema.use_buffers is True
