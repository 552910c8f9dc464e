"""Every command in the README's ``bash`` blocks is exercised, so that none can rot.

Each app command (``python -m lsa_train[.evaluate|.analyze]``, ``lsa-*``) is composed with Hydra's compose
API (a typo'd key, a missing group option or a bad value type fails here). The ones a CPU can run are
then run to completion in-process with few batches and small attack budgets, in a folder holding the
files the README names (``my_nets.py``, ``images/``, ``cnn.pt``, ``arrays.npz``, ``resnet18.pth``) and a
torchvision cache. GPU, cluster and download commands are checked through composition only. The setup
lines (``python3 -m venv ...``) are what CI itself runs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import own_data
import pytest
import torch
import torchvision
from apptest_utils import app_env, compose_train, run_app
from omegaconf import open_dict

import lsa_train.app.checkpoint_loading as checkpoint_loading

README = Path(__file__).resolve().parents[2] / "README.md"
#: Entry points by what follows ``python -m`` (or the console script's name).
PROGRAMS = {
    "lsa_train": "train", "lsa-train": "train",
    "lsa_train.evaluate": "evaluate", "lsa_train.app.evaluate": "evaluate", "lsa-evaluate": "evaluate",
    "lsa_train.analyze": "analyze", "lsa_train.app.analyze": "analyze", "lsa-analyze": "analyze",
    "lsa_train.app.compare": "compare", "lsa-compare": "compare",
    "lsa_train.app.trust_run": "trust", "lsa-trust": "trust",
}
#: Overrides that make each CPU run short; the command's own choices stay.
FAST_RUN = {
    "train": ["++trainer.max_epochs=1", "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1",
              "++trainer.limit_test_batches=1", "++trainer.num_sanity_val_steps=0"],
    "evaluate": ["max_samples=16", "pgd.steps=2", "autoattack.n_samples=8", "masking.square_queries=20",
                 "masking.square_max_samples=8", "masking.large_eps=null", "torch_threads=1"],
    "analyze": ["num_samples=8", "torch_threads=1"],
}
#: Lighter settings for what the command leaves at its default (figures and black-box attacks dominate).
LIGHT_DEFAULTS = {
    "train": {"regularizer.mvl.num_samples": "64", "data.eval_batch_size": "64"},
    "evaluate": {"autoattack.enabled": "false", "masking.square_queries": "null"},
    "analyze": {"perturbations": "[gaussian,pgd]", "feature_map_samples": "2"},
}
#: Commands a CPU without downloads cannot run: checked by composition only.
#: (logger=mlflow / wandb need optional packages; test_loggers.py runs them where they are installed.)
COMPOSE_ONLY = re.compile(r"trainer=(gpu|gpu_bf16|ddp)\b|launcher=|data=cifar10|model=robustbench|data\.download=true"
                          r"|logger=(mlflow|wandb)\b")


@dataclass
class Command:
    """One README command: its program, Hydra overrides, environment and whether it is a multirun."""

    line: int
    text: str
    program: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    multirun: bool = False

    @property
    def runnable(self) -> bool:
        return not COMPOSE_ONLY.search(self.text) and "--help" not in self.args


def readme_commands() -> list[Command]:
    """The commands of every ``bash`` block (continuation lines joined, comments dropped)."""
    text = README.read_text()
    commands = []
    for match in re.finditer(r"```bash\n(.*?)```", text, re.S):
        first_line = text[: match.start()].count("\n") + 2
        for offset, raw in enumerate(match.group(1).replace("\\\n", " \x00").split("\n")):
            line = re.sub(r"\s+#.*$", "", raw.replace("\x00", "")).strip()
            if not line or line.startswith("python3 -m venv"):
                continue
            words = shlex.split(line)
            env = {}
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            if words[:2] == ["python", "-m"]:
                program, args = PROGRAMS[words[2]], words[3:]
            else:
                program, args = PROGRAMS[words[0]], words[1:]
            multirun = "-m" in args
            args = [a for a in args if a != "-m"]
            commands.append(Command(first_line + offset, line, program, args, env, multirun))
    return commands


#: The Hydra apps' commands; ``lsa-compare`` (argparse, no config) is run by test_readme_compare_command_runs.
COMMANDS = [c for c in readme_commands() if c.program not in ("compare", "trust")]
COMPARE_COMMANDS = [c for c in readme_commands() if c.program == "compare"]
TRUST_COMMANDS = [c for c in readme_commands() if c.program == "trust"]


def test_the_readme_has_commands_of_every_program() -> None:
    # the runnable ones are composed (and their values checked) by test_readme_command_runs_on_a_cpu
    assert {c.program for c in COMMANDS} == {"train", "evaluate", "analyze"} and COMPARE_COMMANDS
    assert sum(c.runnable for c in COMMANDS) >= 10


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's folder the README's commands run in, and one short training run (for ``<run>``)."""
    root = tmp_path_factory.mktemp("readme")
    own_data.write_user_module(root, name="my_nets")
    own_data.write_image_folder(root / "images", per_class=10)
    own_data.write_tensor_file(root / "arrays.npz")
    sys.path.insert(0, str(root))
    try:
        import my_nets

        torch.save(my_nets.SmallCNN(in_channels=1, num_classes=3).state_dict(), root / "cnn.pt")
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("my_nets", None)
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cache = root / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), cache / os.path.basename(weights.url))
    try:
        import timm

        torch.save(timm.create_model("resnet18").state_dict(), root / "resnet18.pth")
    except ImportError:
        pass
    run_dir = root / "logs" / "train" / "runs" / "first"
    result = run_app([*FAST_RUN["train"], "regularizer.mvl.num_samples=16", "logger=none",
                      f"hydra.run.dir={run_dir}"], cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def overrides(command: Command, folder: Path) -> list[str]:
    """The command's overrides with ``<placeholders>`` filled and sweeps reduced to their first value."""
    run_ckpt = folder / "logs" / "train" / "runs" / "first" / "checkpoints" / "last.ckpt"
    out = []
    for arg in command.args:
        key, _, value = arg.partition("=")
        if "<run>" in value or "<base_run>" in value:  # the transfer source of adaptive=true: the same run
            value = str(run_ckpt)
        value = value.replace("<partition>", "debug")
        if command.multirun and "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(f"{key}={value}")
    return out


def compose(command: Command, folder: Path, extra: list[str], out: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    if command.program == "train":
        cfg = compose_train([*overrides(command, folder), *extra], out)
    else:
        checkpoint_loading.register_resolvers()
        with initialize_config_module("lsa_train.conf", version_base="1.3"):
            cfg = hydra_compose(command.program, overrides=[*overrides(command, folder), *extra],
                                return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            cfg.paths.log_dir = str(out / "logs")
        HydraConfig().set_config(cfg)
    return cfg


COMPOSE_ONLY_COMMANDS = [c for c in COMMANDS if not c.runnable]


@pytest.mark.parametrize("command", COMPOSE_ONLY_COMMANDS, ids=[f"line{c.line}" for c in COMPOSE_ONLY_COMMANDS])
def test_readme_command_composes(command: Command, folder: Path, tmp_path: Path) -> None:
    if "--help" in command.args:
        result = subprocess.run([sys.executable, "-m", "lsa_train", "--help"], env=app_env(), capture_output=True,
                                text=True, timeout=120, check=False)
        assert result.returncode == 0 and "lsa-train" in result.stdout
        return
    cfg = compose(command, folder, [], tmp_path)
    for arg in overrides(command, folder):
        key, _, value = arg.partition("=")
        if "." in key and not key.startswith(("hydra.", "+")) and value and not value.startswith("["):
            got = getattr(cfg_select(cfg, key), "value", cfg_select(cfg, key))
            assert _same(got, value.strip("'")), arg


def _same(got: object, text: str) -> bool:
    """Whether the composed value is what the command line says (``5e-3`` is ``0.005``, ``true`` is ``True``,
    ``null`` is ``None``)."""
    if got is None:
        return text.lower() in ("null", "none", "~")
    try:
        return float(got) == float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(got).lower() == text.lower()


def cfg_select(cfg, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key.lstrip("+"), throw_on_missing=False)


RUNNABLE = [c for c in COMMANDS if c.runnable]


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE, ids=[f"line{c.line}" for c in RUNNABLE])
def test_readme_command_runs_on_a_cpu(command: Command, folder: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if "timm" in command.text and not (folder / "resnet18.pth").exists():
        pytest.skip("timm is not installed")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("TORCH_HOME", str(folder / "torch_home"))
    if command.env.get("PYTHONPATH") == ".":
        monkeypatch.syspath_prepend(str(folder))
    given = {a.partition("=")[0].lstrip("+") for a in command.args}  # what the command sets, it keeps
    fast = [a for a in FAST_RUN[command.program] if a.partition("=")[0].lstrip("+") not in given]
    extra = [*fast, *(f"{k}={v}" for k, v in LIGHT_DEFAULTS[command.program].items() if k not in given)]
    cfg = compose(command, folder, extra, tmp_path)
    for arg in overrides(command, folder):  # what the command sets is what runs
        key, _, value = arg.partition("=")
        if "." in key and not key.startswith(("hydra.", "+")) and value and not value.startswith("["):
            got = getattr(cfg_select(cfg, key), "value", cfg_select(cfg, key))
            assert _same(got, value.strip("'")), arg
    if command.program == "train":
        from lsa_train.app.train import train

        metrics, objects = train(cfg)
        run_dir = tmp_path if "ckpt_path=" not in command.text else folder / "logs" / "train" / "runs" / "first"
        assert metrics["test/acc_clean"] >= 0.0 and (run_dir / "metrics.json").is_file()
        assert objects["summary"]["run_dir"] == str(run_dir)  # a resume keeps writing to its run's folder
    elif command.program == "evaluate":
        from lsa_train.app.evaluate import evaluate

        report = evaluate(cfg)
        assert report.pgd_accuracy <= report.clean_accuracy and (tmp_path / "report.md").is_file()
        assert report.worst_case_accuracy <= min(a["accuracy_on_common"] for a in report.attacks.values())
        if "adaptive=true" in command.args:
            assert {"pgd_ce_restarts", "pgd_margin", "feature_pgd_kappa_1", "transfer"} <= set(report.attacks)
    else:
        from lsa_train.app.analyze import analyze_run

        outcome = analyze_run(cfg)
        assert outcome.get("probes") or (tmp_path / "lsa_layers.png").is_file()


@pytest.mark.parametrize("command", COMPARE_COMMANDS, ids=[f"line{c.line}" for c in COMPARE_COMMANDS])
def test_readme_compare_command_runs(command: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Each ``lsa-compare`` line, in-process from the repository root (the paper's records are there), on run
    folders written as the app writes them for ``<sweep>`` and ``<run_a>``..., with ``--out`` in a temporary dir."""
    from compare_runs import write_run, write_sweep

    from lsa_train.app import compare

    jobs = [([f"regularizer.lambda={lam}", f"seed={seed}"], 0.9, 0.4 + 0.01 * lam + 0.001 * seed)
            for lam in (0, 1) for seed in (1, 2)]
    sweep = write_sweep(tmp_path / "sweep", jobs)
    runs = {f"<run_{name}>": write_run(tmp_path / name, [f"attack={attack}", f"seed={seed}"], clean=0.9,
                                       pgd=0.4 + 0.02 * (attack == "mart") + 0.001 * seed)
            for name, attack, seed in [("a", "pgd", 1), ("b", "pgd", 2), ("c", "mart", 1), ("d", "mart", 2)]}
    args = [str(runs.get(a, a)).replace("logs/train/multiruns/<sweep>", str(sweep)) for a in command.args]
    if "--out" in args:
        args[args.index("--out") + 1] = str(tmp_path / "out")
    monkeypatch.chdir(README.parent)
    assert compare.main(args) == 0, capsys.readouterr().err
    report = capsys.readouterr().out
    assert "Holm t p" in report and " → " in report and "Runs in no pair" not in report
    if "--out" in args:
        assert (tmp_path / "out" / "compare.csv").is_file() and (tmp_path / "out" / "compare.png").is_file()


@pytest.mark.parametrize("command", TRUST_COMMANDS, ids=[f"line{c.line}" for c in TRUST_COMMANDS])
def test_readme_trust_command_runs(command: Command, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each ``lsa-trust`` line, in-process, on a foreign run folder (a signed run whose config was edited):
    ``--check`` reports it foreign (exit 1), signing makes it the user's own."""
    from lsa_train.app import trust_run
    from lsa_train.signing import sign_run, verify_run

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    sign_run(run_dir)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 2\n")
    assert not verify_run(run_dir).signed
    assert trust_run.main([str(run_dir), "--check"]) == 1
    args = [str(run_dir) if a == "<run>" else a for a in command.args]
    assert trust_run.main(args) == 0, capsys.readouterr().err
    assert verify_run(run_dir).signed and "signed" in capsys.readouterr().out
