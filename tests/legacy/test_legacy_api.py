import gc

import pytest
import torch
from torch import nn

from lsa_train.legacy import LayerSustainabilityAnalysis, legacy_probe_modules


class NestedCNN(nn.Module):
    """ReLU/LeakyReLU inside nested Sequentials, plus a top-level activation module."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()),
            nn.Conv2d(8, 8, 3),
            nn.LeakyReLU(0.1),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MixedCNN(NestedCNN):
    """A non-iterable top-level child sends the original into its fallback branch."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def mlp_a() -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, 100), nn.ELU(), nn.Linear(100, 100), nn.ELU(), nn.Linear(100, 100), nn.ELU(), nn.Linear(100, 2)
    )


CASES = {
    "mlp_elu": (mlp_a, (32, 2)),
    "nested_cnn": (NestedCNN, (16, 3, 16, 16)),
    "mixed_cnn": (MixedCNN, (16, 3, 16, 16)),
}


def build(case: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    make, shape = CASES[case]
    torch.manual_seed(0)
    model = make()
    clean = torch.rand(shape)
    perturbed = (clean + 0.05 * torch.randn(shape)).clamp(0, 1)
    return model, clean, perturbed


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_as_original_package(case):
    original_pkg = pytest.importorskip(
        "LayerSustainabilityAnalysis", reason="LayersSustainabilityAnalysis==1.0.4 (dev extra) is not installed"
    )
    model, clean, perturbed = build(case)
    ours = LayerSustainabilityAnalysis(pretrained_model=model).representation_comparisons(
        img_clean=clean, img_perturbed=perturbed, measure="relative-error", verbose=False
    )
    reference_model, _, _ = build(case)
    theirs = original_pkg.LayerSustainabilityAnalysis(pretrained_model=reference_model).representation_comparisons(
        img_clean=clean, img_perturbed=perturbed, verbose=False
    )
    assert len(ours) == len(theirs) > 0
    assert ours == pytest.approx([float(v) for v in theirs], rel=1e-5)


def test_fallback_branch_hooks_modules_twice_like_the_original():
    model = MixedCNN()
    names = [m._get_name() for m in legacy_probe_modules(model, ["ReLU", "ELU", "LeakyReLU"])]
    # direct children of features and classifier (the nested ReLU is skipped), then, at the
    # non-iterable `act`, the fallback pass over every module: LeakyReLU and ReLU a second time
    assert names == ["LeakyReLU", "ReLU", "ReLU", "LeakyReLU", "ReLU", "ELU"]


def test_representation_tensors_in_forward_order():
    model, clean, _ = build("nested_cnn")
    lsa = LayerSustainabilityAnalysis(pretrained_model=model)
    tensors = lsa.representation_tensors(clean, verbose=False)
    assert [tuple(t.shape) for t in tensors] == [(16, 8, 12, 12), (16, 16)]
    assert not model.training


def test_thirty_calls_leave_no_hooks_and_no_growth():
    model, clean, perturbed = build("nested_cnn")
    lsa = LayerSustainabilityAnalysis(pretrained_model=model)
    first = lsa.representation_comparisons(clean, perturbed, verbose=False)
    gc.collect()
    tensors_before = sum(type(o) in (torch.Tensor, nn.Parameter) for o in gc.get_objects())
    for _ in range(30):
        assert lsa.representation_comparisons(clean, perturbed, verbose=False) == first
    gc.collect()
    tensors_after = sum(type(o) in (torch.Tensor, nn.Parameter) for o in gc.get_objects())
    assert hook_count(model) == 0
    assert tensors_after <= tensors_before


def test_selected_probs_is_editable():
    model, clean, perturbed = build("nested_cnn")
    lsa = LayerSustainabilityAnalysis(pretrained_model=model)
    lsa.selected_probs = ["MaxPool2d"]
    assert len(lsa.representation_comparisons(clean, perturbed, verbose=False)) == 1


def test_shape_mismatch_is_a_clear_error():
    model, clean, _ = build("mlp_elu")
    with pytest.raises(ValueError, match="differ in shape"):
        LayerSustainabilityAnalysis(model).representation_comparisons(clean, clean[:3], verbose=False)


def test_plot_helper_saves_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    path = tmp_path / "legacy.png"
    LayerSustainabilityAnalysis.plot_representation_cm(lst_comparison_measures=[0.1, 0.5, 0.2], save_img=path)
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_works_on_cuda_tensors():
    model, clean, perturbed = build("mlp_elu")
    model = model.cuda()
    lsa = LayerSustainabilityAnalysis(model)
    values = lsa.representation_comparisons(clean.cuda(), perturbed.cuda(), verbose=False)
    assert len(values) == 3


@pytest.mark.parametrize("measure", ["relative-error", "mse", "cosine"])
@pytest.mark.parametrize("chunk_size", [2, 7, None])
def test_chunked_sums_equal_the_whole_batch_measure(measure, chunk_size):
    from lsa_train.analysis.measures import get_measure

    model, clean, perturbed = build("nested_cnn")
    values = LayerSustainabilityAnalysis(model, chunk_size=chunk_size).representation_comparisons(
        clean, perturbed, measure=measure, verbose=False
    )
    measure_fn = get_measure(measure)
    tensors_clean = LayerSustainabilityAnalysis(model).representation_tensors(clean, verbose=False)
    tensors_perturbed = LayerSustainabilityAnalysis(model).representation_tensors(perturbed, verbose=False)
    expected = [
        float(measure_fn(a.reshape(1, -1), b.reshape(1, -1))[0]) for a, b in zip(tensors_clean, tensors_perturbed)
    ]
    # 1 - cos cancels: the float32 whole-batch reference is only good to ~1e-6 absolute
    assert values == pytest.approx(expected, rel=1e-5, abs=1e-6 if measure == "cosine" else 1e-9)


def test_identical_inputs_compare_to_zero_for_every_measure():
    model, clean, _ = build("nested_cnn")
    lsa = LayerSustainabilityAnalysis(model, chunk_size=5)
    for measure in ("relative-error", "mse", "cosine"):
        assert lsa.representation_comparisons(clean, clean.clone(), measure=measure, verbose=False) == [0.0, 0.0]


def test_bad_chunk_size_and_measure_are_clear_errors():
    model, clean, perturbed = build("mlp_elu")
    with pytest.raises(ValueError, match="chunk_size must be >= 1 or None, got 0"):
        LayerSustainabilityAnalysis(model, chunk_size=0)
    with pytest.raises(ValueError, match="measure must be a string"):
        LayerSustainabilityAnalysis(model).representation_comparisons(clean, perturbed, measure=3, verbose=False)


# -- where users rely on 1.0.4's behaviour ---------------------------------------------------
def original_package():
    return pytest.importorskip(
        "LayerSustainabilityAnalysis", reason="LayersSustainabilityAnalysis==1.0.4 (dev extra) is not installed"
    )


class BatchNormCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 12 * 12, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def batchnorm_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = BatchNormCNN()
    clean = torch.rand(16, 3, 16, 16)
    return model, clean, (clean + 0.1 * torch.randn_like(clean)).clamp(0, 1)


def test_representation_tensors_carry_gradient_like_the_original():
    original = original_package()
    model, clean, _ = build("nested_cnn")
    tensors = LayerSustainabilityAnalysis(model).representation_tensors(clean, verbose=False)
    reference_model, _, _ = build("nested_cnn")
    theirs = original.LayerSustainabilityAnalysis(reference_model).representation_tensors(clean, verbose=False)
    assert len(tensors) == len(theirs) == 2
    for ours, reference in zip(tensors, theirs):
        assert ours.requires_grad and reference.requires_grad
        torch.testing.assert_close(ours, reference)
    sum(t.square().mean() for t in tensors).backward()  # a regularizer built from them trains the model
    first_conv = model.features[0][0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert hook_count(model) == 0


def test_train_mode_runs_clean_and_perturbed_apart_like_the_original():
    original = original_package()
    model, clean, perturbed = batchnorm_case()
    lsa = LayerSustainabilityAnalysis(model)
    model.train()  # after the constructor's eval(), as a user training with it does
    ours = lsa.representation_comparisons(clean, perturbed, verbose=False)
    reference_model, _, _ = batchnorm_case()
    reference = original.LayerSustainabilityAnalysis(reference_model)
    reference_model.train()
    theirs = reference.representation_comparisons(clean, perturbed, verbose=False)
    assert len(ours) == len(theirs) == 2
    assert ours == pytest.approx([float(v) for v in theirs], rel=1e-5)
    # the same two train-mode forwards: BatchNorm's running statistics moved as in 1.0.4
    torch.testing.assert_close(model.features[1].running_mean, reference_model.features[1].running_mean)
    assert int(model.features[1].num_batches_tracked) == 2
    assert model.training  # the mode is the user's


def test_eval_mode_batchnorm_matches_the_original():
    original = original_package()
    model, clean, perturbed = batchnorm_case()
    ours = LayerSustainabilityAnalysis(model, chunk_size=6).representation_comparisons(clean, perturbed, verbose=False)
    reference_model, _, _ = batchnorm_case()
    theirs = original.LayerSustainabilityAnalysis(reference_model).representation_comparisons(
        clean, perturbed, verbose=False
    )
    assert ours == pytest.approx([float(v) for v in theirs], rel=1e-5)


@pytest.mark.parametrize("measure", ["MSE", "L2", "relative-error"])
def test_original_measure_names_give_the_original_numbers(measure):
    import warnings

    original = original_package()
    model, clean, perturbed = build("nested_cnn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = LayerSustainabilityAnalysis(model).representation_comparisons(
            clean, perturbed, measure=measure, verbose=False
        )
    reference_model, _, _ = build("nested_cnn")
    theirs = original.LayerSustainabilityAnalysis(reference_model).representation_comparisons(
        clean, perturbed, measure=measure, verbose=False
    )
    assert ours == pytest.approx([float(v) for v in theirs], rel=1e-5)


def test_extension_measures_and_unknown_names_warn_once():
    import warnings

    model, clean, perturbed = build("nested_cnn")
    lsa = LayerSustainabilityAnalysis(model)
    relative = lsa.representation_comparisons(clean, perturbed, verbose=False)
    with pytest.warns(UserWarning, match=r"measure='mse' returns the mse.*1\.0\.4 ignores measure"):
        mse = lsa.representation_comparisons(clean, perturbed, measure="mse", verbose=False)
    assert mse != pytest.approx(relative)
    with pytest.warns(UserWarning, match="measure='L7' is not a name"):
        assert lsa.representation_comparisons(clean, perturbed, measure="L7", verbose=False) == relative
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per name and instance
        assert lsa.representation_comparisons(clean, perturbed, measure="mse", verbose=False) == mse
        lsa.representation_comparisons(clean, perturbed, measure="L7", verbose=False)
