import json

import pytest
import torch
from torch import nn

from lsa_train.analysis import LSAResult, analyze, analyze_perturbations, plot_layer_curves
from lsa_train.analysis.measures import relative_error
from lsa_train.perturbations import list_perturbations, perturb


def manual_cm(model: nn.Module, names: list[str], clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    modules = dict(model.named_modules())
    outputs: dict[str, list[torch.Tensor]] = {}
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, []).append(o.clone()))
        for name in names
    ]
    with torch.no_grad():
        model(clean)
        model(perturbed)
    for handle in handles:
        handle.remove()
    return torch.stack([relative_error(outputs[n][0], outputs[n][1]) for n in names], dim=1)


def test_analyze_matches_manual_hooks(mlp):
    mlp.eval()
    x = torch.rand(40, 2)
    x_hat = perturb("gaussian", x, 0.1, generator=torch.Generator().manual_seed(0))
    result = analyze(mlp, x, x_hat, batch_size=16)
    assert result.probe_names == ["1", "3"]
    assert result.cm.shape == (40, 2)
    assert torch.allclose(result.cm, manual_cm(mlp, ["1", "3"], x, x_hat), atol=1e-6)
    assert result.mu == pytest.approx(result.cm.mean().item(), rel=1e-6)
    assert result.sigma == pytest.approx(result.cm.std(unbiased=False).item(), rel=1e-5)


def test_analyze_uses_eval_mode_and_restores_it(cnn, images):
    cnn.train()
    running = cnn.bn1.running_mean.clone()
    result = analyze(cnn, images, images.clone())
    assert torch.equal(result.cm, torch.zeros_like(result.cm))  # identical inputs, eval BN: CM = 0
    assert cnn.training and cnn.bn1.training
    assert torch.equal(cnn.bn1.running_mean, running)
    assert sum(len(m._forward_hooks) for m in cnn.modules()) == 0


def test_analyze_top_k_and_metadata(cnn, images):
    result = analyze(cnn, images, perturb("speckle", images, 0.3), probes="learnable", top_k=1)
    assert len(result.mvl) == 1
    assert result.top_k == 1 and result.eta is None
    assert result.mvl[0] == int(result.probe_means.argmax())


@pytest.mark.parametrize(
    ("clean", "perturbed", "message"),
    [
        (torch.rand(4, 2), torch.rand(5, 2), "differ in shape: \\(4, 2\\) vs \\(5, 2\\)"),
        (torch.full((4, 2), float("nan")), torch.rand(4, 2), "clean inputs contain NaN or inf"),
        (torch.rand(4, 2), torch.full((4, 2), float("inf")), "perturbed inputs contain NaN or inf"),
    ],
)
def test_analyze_rejects_bad_inputs(mlp, clean, perturbed, message):
    with pytest.raises(ValueError, match=message):
        analyze(mlp, clean, perturbed)


def test_analyze_rejects_bad_measure_and_rule(mlp):
    x = torch.rand(4, 2)
    with pytest.raises(ValueError, match="unknown measure 'l7'"):
        analyze(mlp, x, x, measure="l7")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        analyze(mlp, x, x, eta=-1)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
        analyze(mlp, x, x, top_k=0)


@pytest.mark.parametrize("name", ["gaussian", "salt", "pepper", "speckle"])
def test_statistical_perturbations_stay_in_range_on_any_shape(name):
    for shape in [(6, 2), (3, 1, 8, 8), (2, 3, 4, 4, 2)]:
        x = torch.rand(shape)
        out = perturb(name, x, 0.3, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, x)


def test_salt_and_pepper_set_extremes():
    x = torch.full((1, 1000), 0.5)
    salted = perturb("salt", x, 0.2, generator=torch.Generator().manual_seed(0))
    peppered = perturb("pepper", x, 0.2, generator=torch.Generator().manual_seed(0))
    assert set(salted.unique().tolist()) == {0.5, 1.0}
    assert set(peppered.unique().tolist()) == {0.0, 0.5}
    assert 0.15 < (salted == 1).float().mean() < 0.25


def test_perturbation_errors(mlp):
    x = torch.rand(3, 2)
    with pytest.raises(ValueError, match="unknown perturbation 'blur'; choose one of"):
        perturb("blur", x, 0.1)
    with pytest.raises(ValueError, match="must be >= 0"):
        perturb("gaussian", x, -0.1)
    with pytest.raises(ValueError, match="needs model="):
        perturb("pgd", x, 0.1)
    with pytest.raises(ValueError, match="fraction"):
        perturb("salt", x, 1.5)
    assert list_perturbations() == ["gaussian", "salt", "pepper", "speckle", "fgsm", "pgd"]


def test_result_exports_round_trip(tmp_path, cnn, images):
    result = analyze(cnn, images, perturb("gaussian", images, 0.2), perturbation="gaussian", eta=0.0)
    result.metadata["eps"] = 0.2
    result.to_json(tmp_path / "r.json")
    back = LSAResult.from_json(tmp_path / "r.json")
    assert back.probe_names == result.probe_names and back.mvl == result.mvl
    assert torch.allclose(back.cm, result.cm)
    assert back.metadata == {"eps": 0.2} and back.perturbation == "gaussian"
    csv_text = result.to_csv(tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text() == csv_text
    header, *rows = csv_text.strip().splitlines()
    assert header == "index,probe,mean,std,mvl" and len(rows) == len(result.probe_names)
    assert json.loads(result.to_json())["mvl_names"] == result.mvl_names
    table = result.to_table()
    assert all(name in table for name in result.probe_names)
    assert result.to_markdown().count("\n| ") == len(result.probe_names) + 1


def test_plot_writes_png_with_every_perturbation(tmp_path, cnn, images):
    labels = torch.zeros(len(images), dtype=torch.long)
    results = analyze_perturbations(cnn, images, labels, perturbations=["gaussian", "salt"], eps=0.1)
    path = plot_layer_curves(results, tmp_path / "figs" / "lsa.png", mvl=[0])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(path.parent.glob(".*tmp*"))


def test_plot_rejects_mismatched_probes(tmp_path, cnn, images):
    a = analyze(cnn, images, images, probes="learnable")
    b = analyze(cnn, images, images)
    with pytest.raises(ValueError, match="different probes"):
        plot_layer_curves({"a": a, "b": b}, tmp_path / "x.png")


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_adversarial_perturbation_restores_each_module_own_mode(cnn, images, name):
    cnn.train()
    cnn.bn1.eval()  # a frozen BatchNorm inside a model in train mode
    perturb(name, images, 0.1, model=cnn)  # labels from the model's own predictions
    assert cnn.training and not cnn.bn1.training


def test_eval_mode_helper_restores_mixed_modes(cnn):
    from lsa_train.utils.modes import eval_mode

    cnn.train()
    cnn.bn1.eval()
    with eval_mode(cnn):
        assert not any(m.training for m in cnn.modules())
    assert cnn.training and not cnn.bn1.training
    assert all(m.training for m in cnn.modules() if m is not cnn.bn1)
