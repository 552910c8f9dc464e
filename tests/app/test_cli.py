"""The app as a user runs it: ``python -m lsa_train`` / ``lsa-train`` in subprocesses."""

from __future__ import annotations

import csv
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import own_data
import pytest
import torch
from apptest_utils import CliResult, Hostile, run_app
from omegaconf import OmegaConf

#: Keeps subprocess runs short: a few batches per epoch, small analysis subset, one test batch.
QUICK = [
    "++trainer.limit_train_batches=4", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1",
    "regularizer.mvl.num_samples=64", "trainer.num_sanity_val_steps=0",
]
TINY = ["trainer=debug", "regularizer.mvl.num_samples=32"]


@pytest.mark.slow
def test_short_real_run_writes_the_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_app([*QUICK, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("LSA training summary", "clean accuracy", "PGD-20 accuracy", "FGSM accuracy at eps=0.3",
                 "R&G score", "final MVL", "run dir"):
        assert name in result.stdout, name
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("epoch_*.ckpt"))) == 1  # the best epoch
    assert list((run_dir / "csv").rglob("metrics.csv"))
    assert list((run_dir / "lsa").glob("*.png"))
    assert "R&G score" in (run_dir / "report.md").read_text()
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["setting"]["tags"] == ["dev"]  # the config's tags are kept with the results
    assert [entry["epoch"] for entry in summary["mvl_history"]] == [0, 1]  # the run's, not the tested checkpoint's
    fgsm = summary["fgsm"]
    assert list(fgsm) == ["0", "0.1", "0.2", "0.3", "0.4", "0.5"]
    assert summary["rg_score"] == pytest.approx(100 * sum(fgsm.values()), rel=1e-5)
    assert summary["acc_clean"] == pytest.approx(fgsm["0"])
    assert 0.0 <= summary["acc_pgd"] <= summary["acc_clean"] and isinstance(summary["mvl"], list)
    assert summary["acc_clean"] > 0.3  # 8 steps of PGD-AT on 10 digit classes: well above chance (0.1)
    assert summary["tested_checkpoint"].startswith(str(run_dir / "checkpoints" / "epoch_"))
    assert summary["run_dir"] == str(run_dir)


def test_console_script_help(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("lsa-train")
    if not script.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    result = run_app(["--help"], cwd=tmp_path, command=[str(script)])
    assert result.returncode == 0, result.stderr
    assert "lsa-train" in result.stdout
    for group in ("attack: apgd, fgsm, fgsm_rs, mart, none, pgd, pgd_l2, trades", "regularizer: lsa, none",
                  "experiment: ", "data: "):
        assert group in result.stdout


@pytest.mark.slow
def test_multirun_two_jobs_and_sweep_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_app(["-m", *TINY, "regularizer.lambda=0,0.1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / ".hydra" / "config.yaml").is_file()
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [row["job"] for row in rows] == ["0", "1"]
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert rows[0]["overrides"] == "regularizer.lambda=0" and rows[1]["overrides"] == "regularizer.lambda=0.1"
    for row in rows:
        assert 0.0 <= float(row["test/acc_pgd"]) <= float(row["test/acc_clean"])
        assert float(row["test/rg_score"]) >= 100 * float(row["test/acc_clean"])  # eps 0 term + the others


@pytest.mark.slow
def test_multirun_with_a_failing_job_still_summarizes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_app(["-m", *TINY, "attack.eps=0.1,-0.1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 1
    assert "1 of 2 sweep jobs failed" in result.last_stderr_line and "attack.eps=-0.1" in result.last_stderr_line
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [row["status"] for row in rows] == ["completed", "failed"]
    assert "attack.eps=-0.1" in rows[1]["error"] and rows[0]["test/acc_pgd"]
    assert not (sweep / "1" / "checkpoints").exists()


@pytest.mark.slow
def test_trades_with_awp_short_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_app(["attack=trades", "awp.gamma=5e-3", *QUICK, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["awp"] == {"gamma": 5e-3, "warmup": 0}
    assert saved["hyper_parameters"]["base_loss"] == "trades"


@pytest.mark.slow
def test_multirun_mart_with_and_without_awp(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_app(["-m", "attack=mart", "awp.gamma=0,5e-3", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert [row["overrides"] for row in rows] == ["awp.gamma=0", "awp.gamma=0.005"]  # the swept key
    for job, gamma in (("0", 0.0), ("1", 5e-3)):
        config = OmegaConf.load(sweep / job / ".hydra" / "config.yaml")
        assert config.attack._target_ == "lsa_train.attacks.MARTAttack" and config.attack.base_loss == "mart"
        assert config.awp.gamma == gamma and config.module.awp.gamma == gamma  # module.awp is ${awp}


# -- bad inputs: exit code 2, one line naming the value, nothing written but Hydra's .hydra/ ------------
def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "a_file").write_text("not a folder")
    marker = tmp / "pwned"
    torch.save({"state_dict": {}, "payload": Hostile(marker)}, tmp / "hostile.ckpt")
    images = own_data.write_image_folder(tmp / "images")
    (tmp / "no_classes" / "train").mkdir(parents=True)
    empty_class = own_data.write_image_folder(tmp / "empty_class")
    for image in (empty_class / "train" / "c1").iterdir():
        image.unlink()
    broken = own_data.write_image_folder(tmp / "broken_image")
    next((broken / "train" / "c0").iterdir()).write_bytes(b"not an image")
    own_data.write_tensor_file(tmp / "bad_labels.npz", labels_offset=5)
    own_data.write_tensor_file(tmp / "bad_range.npz", scale=2.0)
    own_data.write_tensor_file(tmp / "bad_length.npz", drop_label=True)
    folder = ["data=imagefolder", "model.padding=2"]
    (tmp / "corrupt.ckpt").write_bytes(b"this is not a checkpoint")
    torch.save({"weights": torch.zeros(1)}, tmp / "not_lightning.ckpt")
    cases = {
        "unknown_model_option": (["model=resnet999"], "model/resnet999"),
        "unknown_model_name": (["model.name=resnet999"], "resnet999"),
        "typo_key": (["attack.epss=0.1"], "attack.epss"),
        "negative_eps": (["attack.eps=-0.1"], "attack.eps=-0.1"),
        "lambda_wrong_length": (
            ["regularizer.lambda=[0.1,0.2]", "regularizer.mvl.mode=fixed", "regularizer.mvl.layers=[2]"],
            "regularizer.lambda=[0.1,0.2]",
        ),
        "incompatible_input_size": (["model.input_size=28"], "(1, 8, 8)"),
        "missing_dataset": (["data=cifar10", f"paths.data_dir={tmp / 'no_data'}"], "data.download=true"),
        "unwritable_output_dir": ([f"paths.output_dir={tmp / 'a_file' / 'out'}"], str(tmp / "a_file" / "out")),
        "unwritable_run_dir": ([f"hydra.run.dir={tmp / 'a_file' / 'run'}"], str(tmp / "a_file" / "run")),
        "missing_ckpt_path": ([f"ckpt_path={tmp / 'missing.ckpt'}"], "missing.ckpt"),
        "corrupt_ckpt_path": ([f"ckpt_path={tmp / 'corrupt.ckpt'}"], "corrupt.ckpt"),
        "not_a_lightning_ckpt": ([f"ckpt_path={tmp / 'not_lightning.ckpt'}"], "not_lightning.ckpt"),
        "gpu_without_gpu": (["trainer=gpu"], "trainer=gpu"),
        "seed_not_a_number": (["seed=abc"], "seed=abc"),
        "hostile_ckpt_path": ([f"ckpt_path={tmp / 'hostile.ckpt'}"], "trust_checkpoint=true"),
        "missing_image_folder": ([*folder, f"data.root={tmp / 'nope'}"], str(tmp / "nope")),
        "no_class_folders": ([*folder, f"data.root={tmp / 'no_classes'}"], str(tmp / "no_classes")),
        "class_without_images": ([*folder, f"data.root={empty_class}"], "c1"),
        "unreadable_image": ([*folder, f"data.root={broken}"], str(broken / "train" / "c0")),
        "labels_out_of_range": (
            ["data=tensors", f"data.path={tmp / 'bad_labels.npz'}", "data.num_classes=2", "model=mlp_a"], "bad_labels"
        ),
        "inputs_out_of_range": (["data=tensors", f"data.path={tmp / 'bad_range.npz'}", "model=mlp_a"], "[0, 1]"),
        "mismatched_lengths": (["data=tensors", f"data.path={tmp / 'bad_length.npz'}", "model=mlp_a"], "bad_length"),
        "custom_model_not_importable": (
            ["model=custom", "model._target_=no_such_package.Net", f"data.root={images}", "data=imagefolder"],
            "no_such_package.Net",
        ),
    }
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root writes through permission bits
        locked = tmp / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        cases["read_only_output_dir"] = ([f"paths.output_dir={locked / 'out'}"], str(locked / "out"))
    return cases


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[CliResult, Path, str]]:
    """Runs every bad-input case once, three subprocesses at a time."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    cases = _bad_inputs(tmp)

    def run(name: str) -> tuple[str, tuple[CliResult, Path, str]]:
        args, needle = cases[name]
        run_dir = tmp / "runs" / name
        extra = [] if any(a.startswith("hydra.run.dir=") for a in args) else [f"hydra.run.dir={run_dir}"]
        return name, (run_app([*args, *extra], cwd=tmp), run_dir, needle)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, cases))


BAD_INPUTS = [
    "unknown_model_option", "unknown_model_name", "typo_key", "negative_eps", "lambda_wrong_length",
    "incompatible_input_size", "missing_dataset", "unwritable_output_dir", "unwritable_run_dir",
    "missing_ckpt_path", "corrupt_ckpt_path", "not_a_lightning_ckpt", "gpu_without_gpu", "seed_not_a_number",
    "hostile_ckpt_path", "missing_image_folder", "no_class_folders", "class_without_images", "unreadable_image",
    "labels_out_of_range", "inputs_out_of_range", "mismatched_lengths", "custom_model_not_importable",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_fast_with_one_line(bad_runs, case: str) -> None:
    if case == "gpu_without_gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is available")
    result, run_dir, needle = bad_runs[case]
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.last_stderr_line
    assert last.startswith("lsa-train: error: ") and needle in last, last
    assert "Traceback" not in result.stderr
    assert not (run_dir / "checkpoints").exists()
    for name in ("metrics.json", "report.md", "csv", "lsa"):
        assert not (run_dir / name).exists(), name
    assert not (run_dir.parent.parent / "pwned").exists()  # the hostile checkpoint ran nothing


def test_read_only_output_dir_when_not_root(bad_runs) -> None:
    if "read_only_output_dir" not in bad_runs:
        pytest.skip("running as root: permission bits do not stop writes (the not-a-folder cases cover it)")
    result, _, needle = bad_runs["read_only_output_dir"]
    assert result.returncode == 2 and needle in result.last_stderr_line
