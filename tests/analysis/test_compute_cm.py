"""compute_cm / compute_cms: shared clean forwards, chunking, layout and early stop."""

import pytest
import torch
from torch import nn

from lsa_train.analysis import compute_cm, compute_cms, select_probes
from lsa_train.analysis.layout import accepts_channels_last, default_chunk_size
from lsa_train.analysis.measures import relative_error
from lsa_train.perturbations import perturb


class ViewCNN(nn.Module):
    """Flattens with ``view``, which fails on a channels_last tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        return self.head(x.view(x.size(0), -1))


def count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_compute_cms_shares_one_clean_forward_per_chunk(mlp):
    x = torch.rand(100, 2, generator=torch.Generator().manual_seed(0))
    noisy = [perturb("gaussian", x, s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate((0.05, 0.2))]
    probes = select_probes(mlp, x[:1])
    expected = [compute_cm(mlp, probes, x, p, batch_size=40) for p in noisy]
    calls = count_forwards(mlp)
    cms = compute_cms(mlp, probes, x, noisy, batch_size=40)
    assert calls[0] == 3 * (1 + len(noisy))  # 3 chunks, one clean + one per perturbation each
    for cm, ref in zip(cms, expected):
        assert torch.allclose(cm, ref, atol=1e-6)
    assert not torch.equal(cms[0], cms[1])


def test_chunk_size_does_not_change_the_cm(cnn, images):
    probes = select_probes(cnn, images[:1])
    x_hat = perturb("speckle", images, 0.3, generator=torch.Generator().manual_seed(0))
    whole = compute_cm(cnn, probes, images, x_hat, batch_size=len(images))
    for size in (1, 5, None):
        assert torch.allclose(compute_cm(cnn, probes, images, x_hat, batch_size=size), whole, atol=1e-6)


def test_channels_last_changes_speed_not_values(cnn, images):
    probes = select_probes(cnn, images[:1])
    x_hat = perturb("gaussian", images, 0.1, generator=torch.Generator().manual_seed(0))
    dense = compute_cm(cnn, probes, images, x_hat, channels_last=False)
    assert torch.allclose(compute_cm(cnn, probes, images, x_hat, channels_last=True), dense, atol=1e-5)
    assert torch.allclose(compute_cm(cnn, probes, images, x_hat), dense, atol=1e-5)


def test_models_that_view_their_features_fall_back_to_contiguous_inputs():
    torch.manual_seed(0)
    model = ViewCNN().eval()
    images = torch.rand(10, 3, 8, 8)  # 3 channels: a 1-channel tensor is contiguous in both layouts
    assert not accepts_channels_last(model, images)
    probes = select_probes(model, images[:1])
    x_hat = perturb("gaussian", images, 0.1, generator=torch.Generator().manual_seed(0))
    cm = compute_cm(model, probes, images, x_hat)  # auto layout: must not raise
    with torch.no_grad():
        expected = relative_error(model.act(model.conv(images)), model.act(model.conv(x_hat)))
    assert torch.allclose(cm[:, 0], expected, atol=1e-6)
    head_probe = select_probes(model, images[:1], ["head"])
    with pytest.raises(RuntimeError, match="view"):  # forcing the layout reaches the view
        compute_cm(model, head_probe, images, x_hat, channels_last=True)
    assert compute_cm(model, head_probe, images, x_hat).shape == (10, 1)


def test_layers_after_the_deepest_probe_never_run(mlp):
    x = torch.rand(30, 2)
    probes = select_probes(mlp, x[:1])
    head_calls = count_forwards(mlp[4])
    compute_cm(mlp, probes, x, x + 0.1, batch_size=8)
    assert head_calls[0] == 0


def test_clean_reference_survives_inplace_ops_after_the_probe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    x = torch.randn(20, 2)
    x_hat = x + 0.3
    probes = select_probes(model, x[:1], ["0"])  # the Linear whose output ReLU overwrites
    cm = compute_cm(model, probes, x, x_hat)
    with torch.no_grad():
        expected = relative_error(model[0](x), model[0](x_hat))
    assert torch.allclose(cm[:, 0], expected, atol=1e-6)


def test_default_chunk_size_depends_on_the_device():
    assert default_chunk_size(torch.device("cpu")) == 64
    assert default_chunk_size(torch.device("cuda")) == 512


def test_compute_cms_rejects_empty_and_mismatched_inputs(mlp):
    x = torch.rand(4, 2)
    probes = select_probes(mlp, x[:1])
    with pytest.raises(ValueError, match="at least one perturbed"):
        compute_cms(mlp, probes, x, [])
    with pytest.raises(ValueError, match="differ in shape"):
        compute_cms(mlp, probes, x, [x, torch.rand(5, 2)])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        compute_cm(mlp, probes, x, x, batch_size=0)
