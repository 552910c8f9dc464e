"""Bad input to the app, as a user meets it in a subprocess: exit code 2, one stderr line naming the bad value,
and nothing written but Hydra's ``.hydra/`` (its own file, so that pytest-xdist can run it beside ``test_cli``)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import own_data
import pytest
import torch
from apptest_utils import CliResult, Hostile, run_app


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
