"""Runs that mean what they say (issue 25, item 4): ``last.ckpt`` holds every finished epoch, a resume that
switches a config group keeps the run's own values, the summary and ``lsa-evaluate`` name the same weights, a
bare checkpoint is checked against what it records, and a resumed run's wall time counts both parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import lsa_train.app.checkpoint_loading as checkpoint_loading
from lsa_train.app.errors import ConfigError
from lsa_train.app.report import summary_rows
from lsa_train.app.train import train

#: A few batches per epoch, no loggers or rich output, no figures.
SHORT = [
    "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1",
    "regularizer.mvl.num_samples=32", "regularizer.mvl.plot=false", "attack.steps=2", "logger=none",
    "callbacks.rich_model_summary=null", "callbacks.rich_progress_bar=null", "trainer.num_sanity_val_steps=0",
    "module.test_eps_grid=[0.0,0.2]",
]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_last_ckpt_holds_every_epoch_also_without_validation(make_cfg, tmp_path: Path) -> None:
    # validation in epoch 2 only: epoch 3 ends without one, and last.ckpt must still hold it
    _, objects = train(make_cfg(*SHORT, "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2"))
    last = _load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 6)  # 0-based epoch index 2: the third, 2 steps each
    assert objects["trainer"].global_step == 6


def test_a_resumed_runs_wall_time_counts_both_parts(make_cfg, tmp_path: Path) -> None:
    _, first = train(make_cfg(*SHORT, "trainer.max_epochs=1", out="first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    recorded = next(v["wall_time_s"] for k, v in _load(last)["callbacks"].items() if "WallTime" in k)
    assert 0 < recorded <= first["summary"]["wall_time_s"]  # the time up to the checkpoint, saved in it
    _, second = train(make_cfg(*SHORT, "trainer.max_epochs=2", f"ckpt_path={last}", out="second"))
    summary = second["summary"]
    assert summary["wall_time_before_resume_s"] == round(recorded, 2)
    assert summary["wall_time_s"] == pytest.approx(recorded + summary["wall_time_this_part_s"], abs=0.02)
    row = dict(summary_rows(summary))["epochs / wall time (s)"]
    assert row == (f"2 / {summary['wall_time_s']:.1f} ({recorded:.1f} before the resume + "
                   f"{summary['wall_time_this_part_s']:.1f})")
    # the second part's checkpoint carries the total on
    total = next(v["wall_time_s"] for k, v in _load(tmp_path / "second" / "checkpoints" / "last.ckpt")["callbacks"]
                 .items() if "WallTime" in k)
    assert recorded < total <= summary["wall_time_s"]


def compose_app(config_name: str, overrides: list[str], out_dir: Path) -> DictConfig:
    """``<config_name>.yaml`` (evaluate, analyze) composed with ``overrides``, writing into ``out_dir``."""
    checkpoint_loading.register_resolvers()
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir / "logs")
    HydraConfig().set_config(cfg)
    return cfg


def _as_run_folder(cfg, run_dir: Path) -> None:
    """``.hydra/config.yaml`` as ``python -m lsa_train`` saves it, signed as the user's own run (the in-process
    ``train`` of a composed config writes no ``.hydra/``)."""
    from omegaconf import OmegaConf

    from lsa_train.signing import sign_run

    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run_dir / ".hydra" / "config.yaml")
    sign_run(run_dir)


def test_the_summary_and_the_readme_evaluate_command_test_the_same_weights(make_cfg, tmp_path: Path) -> None:
    from lsa_train.app.evaluate import evaluate

    # a monitor that gets worse every epoch (the global step, mode min): the best epoch is the first, not the last
    whole_test_split = [o for o in SHORT if not o.startswith("++trainer.limit_test_batches")]
    cfg = make_cfg(*whole_test_split, "trainer.max_epochs=2", "callbacks.model_checkpoint.monitor=step",
                   "callbacks.model_checkpoint.mode=min")
    metrics, objects = train(cfg)
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    summary = objects["summary"]
    assert summary["tested_checkpoint"] == str(last) != summary["best_checkpoint"]
    assert summary["weights"] == "last (after 2 epochs, step 4)"
    assert summary["mvl"] == _load(last)["lsa_train"]["mvl"]  # the MVL of the tested epoch
    rows = dict(summary_rows(summary))
    assert rows["weights"] == summary["weights"]
    assert "| weights | last (after 2 epochs, step 4) |" in (run_dir / "report.md").read_text()

    # the README's command, on the run's whole test split: the same weights, named alike
    _as_run_folder(cfg, run_dir)
    report = evaluate(compose_app("evaluate", [f"ckpt_path={last}", "autoattack.enabled=false",
                                               "masking.enabled=false", "pgd.steps=2", "torch_threads=1"],
                                  tmp_path / "eval"))
    assert report.metadata["weights"] == f"{summary['weights']}: '{last}'"
    assert report.n_samples == 360 and report.clean_accuracy == pytest.approx(metrics["test/acc_clean"], abs=1e-6)
    best = Path(summary["best_checkpoint"])
    label = checkpoint_loading.weights_label(_load(best), best)
    assert label.startswith("best by step = 2.0000 (after 1 epoch, step 2)")


def _without_run_record(source: Path, target: Path, record: object = None) -> Path:
    """A copy of checkpoint ``source`` with its run record removed (``record=None``) or replaced."""
    checkpoint = _load(source)
    states = checkpoint["callbacks"]
    key = next(k for k in states if k == "RunRecordCallback")
    if record is None:
        del states[key]
    else:
        states[key] = record
    torch.save(checkpoint, target)
    return target


def test_a_checkpoint_without_its_run_folder_is_checked_against_what_it_records(make_cfg, tmp_path: Path) -> None:
    train(make_cfg(*SHORT, "trainer.max_epochs=1", out="first"))
    bare = tmp_path / "bare.ckpt"  # handed over without its run folder
    bare.write_bytes((tmp_path / "first" / "checkpoints" / "last.ckpt").read_bytes())
    record = next(v for k, v in _load(bare)["callbacks"].items() if k == "RunRecordCallback")
    assert record["attack"]["eps"] == 0.1 and record["model"]["name"] == "cnn_b" and record["probes"] == "activations"

    resume = [*SHORT, "trainer.max_epochs=2", f"ckpt_path={bare}"]
    with pytest.raises(ConfigError, match=r"^ckpt_path='.*bare.ckpt' \(no run folder\) was trained otherwise than this "
                                          r"command line says: attack.eps=0.1 in the checkpoint, 0.2 here"):
        train(make_cfg(*resume, "attack.eps=0.2", out="eps"))
    with pytest.raises(ConfigError, match=r"model.name='cnn_b' in the checkpoint, 'mlp_a' here"):
        train(make_cfg(*resume, "model=mlp_a", out="model"))
    # a module setting the run record does not hold: from the checkpoint's hyper_parameters (Lightning's)
    with pytest.raises(ConfigError, match=r"other module settings: trades_beta=6.0 in the checkpoint, 3 here"):
        train(make_cfg(*resume, "module.trades_beta=3", out="beta"))
    for refused in ("eps", "model", "beta"):
        assert not (tmp_path / refused / "checkpoints").exists()  # refused before anything was trained

    # the same training with another batch size: resumed, and the summary says what differs
    _, objects = train(make_cfg(*resume, "data.batch_size=32", out="second"))
    assert objects["trainer"].current_epoch == 2
    assert any("differs from this command line in data.batch_size=64 in the checkpoint, 32 here" in note
               for note in objects["summary"]["notes"])

    # an older checkpoint records no run: resumed, said in the summary
    older = _without_run_record(bare, tmp_path / "older.ckpt")
    _, objects = train(make_cfg(*SHORT, "trainer.max_epochs=2", f"ckpt_path={older}", out="older"))
    assert any("records no run" in note for note in objects["summary"]["notes"])
    # a record is data: an interpolation in it is refused, never resolved
    hostile = _without_run_record(bare, tmp_path / "hostile.ckpt", {**record, "probes": "${oc.env:HOME}"})
    with pytest.raises(ConfigError, match=r"run record of ckpt_path=.* holds an interpolation at probes"):
        train(make_cfg(*SHORT, "trainer.max_epochs=2", f"ckpt_path={hostile}", out="hostile"))


def test_evaluate_checks_a_checkpoint_without_its_run_folder_against_run_config(make_cfg, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from lsa_train.app.evaluate import evaluate

    cfg = make_cfg(*SHORT, "trainer.max_epochs=1", out="run")
    train(cfg)
    bare = tmp_path / "bare.ckpt"
    bare.write_bytes((tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes())
    _as_run_folder(cfg, tmp_path / "run")
    other = tmp_path / "other" / ".hydra" / "config.yaml"  # the config of another run, with another budget
    other.parent.mkdir(parents=True)
    saved = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    saved.attack.eps = 0.3
    OmegaConf.save(saved, other)
    from lsa_train.signing import sign_run

    sign_run(other.parent.parent)
    quick = ["max_samples=32", "autoattack.enabled=false", "masking.enabled=false", "pgd.steps=1", "torch_threads=1"]
    with pytest.raises(ConfigError, match=r"was trained otherwise than run_config=.*: attack.eps=0.1 in the "
                                          r"checkpoint, 0.3 here"):
        evaluate(compose_app("evaluate", [f"ckpt_path={bare}", f"run_config={other}", *quick], tmp_path / "e1"))
    report = evaluate(compose_app("evaluate", [f"ckpt_path={bare}",
                                               f"run_config={tmp_path / 'run' / '.hydra' / 'config.yaml'}", *quick],
                                  tmp_path / "e2"))
    assert report.metadata["weights"] == f"'bare.ckpt' (after 1 epoch, step 2): '{bare}'"  # named by its file
    # the same file as model.checkpoint of model=... data=...: its budget is the default, differences are lines
    given = ["model=cnn_b", "data=digits", f"model.checkpoint={bare}", *quick]
    report = evaluate(compose_app("evaluate", [*given, "data.test_fraction=0.3"], tmp_path / "e3"))
    assert report.pgd_settings["eps"] == 0.1  # the checkpoint's attack.eps: pgd.eps was not given
    # data.seed: ${seed} would be evaluate's seed 0, another split than the run's 313 (its training points in the
    # test split): the recorded split seed is taken, and said; other differences are lines
    prefix = f"model.checkpoint='{bare}' is an lsa-train checkpoint trained otherwise than given here: "
    adopted = ("data.seed=313: the split model.checkpoint was trained with (its run record), so its training points "
               "stay out of the evaluated split; data.seed=<n> on the command line draws another")
    assert [w for w in report.warnings if "model.checkpoint" in w] == [
        adopted, f"{prefix}data.test_fraction=0.2 in the checkpoint, 0.3 here"]
    assert report.n_samples == 32
    # the same points as the run's own test split: the clean accuracy equals evaluating the run folder itself
    same = evaluate(compose_app("evaluate", [*given], tmp_path / "e4"))
    own = evaluate(compose_app("evaluate", [f"ckpt_path={bare}",
                                            f"run_config={tmp_path / 'run' / '.hydra' / 'config.yaml'}", *quick],
                               tmp_path / "e5"))
    assert same.clean_accuracy == own.clean_accuracy
    assert [w for w in same.warnings if "model.checkpoint" in w] == [adopted]  # no other difference
    # a seed named on the command line is kept, and the difference is a line
    named = evaluate(compose_app("evaluate", [*given, "data.seed=5"], tmp_path / "e6"))
    named_lines = [w for w in named.warnings if "model.checkpoint" in w]
    assert named_lines == [f"{prefix}data.seed=313 in the checkpoint, 5 here"]
