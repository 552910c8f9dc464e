import pytest
import torch
import torchvision
from torch import nn

from lsa_train.analysis import ProbeCapture, ProbeSelectionError, list_probes, select_probes


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_default_probes_are_activations_in_forward_order(mlp):
    assert list_probes(mlp, torch.rand(1, 2)) == ["1", "3"]


def test_learnable_probes_are_conv_and_linear(cnn, images):
    assert list_probes(cnn, images[:1], "learnable") == ["conv1", "conv2", "head"]


def test_patterns_glob_regex_and_call_suffix(cnn, images):
    assert list_probes(cnn, images[:1], ["conv*"]) == ["conv1", "conv2"]
    assert list_probes(cnn, images[:1], ["re:conv[2]|head"]) == ["conv2", "head"]
    assert list_probes(cnn, images[:1], ["relu:2"]) == ["relu:2"]


def test_explicit_module_list(cnn, images):
    assert list_probes(cnn, images[:1], [cnn.head, cnn.bn1]) == ["bn1", "head"]


def test_reused_module_gives_one_probe_per_call():
    model = torchvision.models.resnet18(num_classes=3)
    names = list_probes(model, torch.rand(1, 3, 32, 32))
    assert names[:3] == ["relu", "layer1.0.relu:1", "layer1.0.relu:2"]
    assert len(names) == 1 + 8 * 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("everything", "unknown probe set 'everything'"),
        (["nothing*"], "probe pattern 'nothing\\*' matches no module"),
        (["re:("], "bad probe regex"),
        ([], "empty probe list"),
    ],
)
def test_bad_probe_specs_raise_one_line_errors(cnn, images, spec, message):
    with pytest.raises(ProbeSelectionError, match=message) as info:
        select_probes(cnn, images[:1], spec)
    assert "\n" not in str(info.value)


def test_no_probe_matched_names_the_module_types():
    model = nn.Sequential(nn.Flatten(), nn.Identity())  # nothing to probe, not even conv/linear outputs
    with pytest.raises(ProbeSelectionError, match=r"no probe matched 'learnable'.*'Flatten', 'Identity'"):
        select_probes(model, torch.rand(1, 2))


def test_foreign_module_rejected(cnn, images):
    with pytest.raises(ProbeSelectionError, match="not part of the model"):
        select_probes(cnn, images[:1], [nn.ReLU()])


def test_selection_restores_training_mode(cnn, images):
    cnn.train()
    select_probes(cnn, images[:1])
    assert cnn.training and cnn.bn1.training
    assert hook_count(cnn) == 0


def test_selection_restores_each_module_own_mode(cnn, images):
    cnn.train()
    cnn.bn1.eval()  # a frozen BatchNorm inside a model in train mode
    select_probes(cnn, images[:1])
    assert cnn.training and not cnn.bn1.training


def test_capture_records_and_removes_hooks(cnn, images):
    probes = select_probes(cnn, images[:1])
    with ProbeCapture(cnn, probes) as capture:
        assert hook_count(cnn) > 0
        cnn.eval()
        cnn(images)
        out = capture.pop()
    assert list(out) == ["relu:1", "relu:2"]
    assert out["relu:1"].shape == (12, 4, 8, 8)
    assert hook_count(cnn) == 0


def test_hooks_removed_on_exception(cnn, images):
    probes = select_probes(cnn, images[:1])
    with pytest.raises(RuntimeError, match="boom"), ProbeCapture(cnn, probes):
        cnn(images)
        raise RuntimeError("boom")
    assert hook_count(cnn) == 0


def test_inplace_outputs_are_not_overwritten(cnn, images):
    """relu:1 is inplace and its output feeds conv2; the stored copy must equal the true value."""
    cnn.eval()
    probes = select_probes(cnn, images[:1], ["relu:1"])
    expected = torch.relu(cnn.bn1(cnn.conv1(images))).detach()
    with ProbeCapture(cnn, probes) as capture:
        out = cnn(images)
        stored = capture.pop()["relu:1"]
        out.add_(1.0)  # unrelated in-place work after the forward
        stored_again = stored.clone()
    assert torch.equal(stored, expected)
    assert torch.equal(stored_again, expected)


def test_linear_probe_followed_by_inplace_activation_keeps_pre_activation():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(inplace=True))
    x = torch.randn(4, 3)
    probes = select_probes(model, x[:1], ["0"])
    with ProbeCapture(model, probes) as capture:
        model(x)
        stored = capture.pop()["0"]
    assert torch.allclose(stored, model[0](x))
    assert (stored < 0).any()


def test_pause_records_nothing(cnn, images):
    probes = select_probes(cnn, images[:1])
    with ProbeCapture(cnn, probes) as capture:
        with capture.paused():
            assert capture.is_paused
            cnn(images)
        assert capture.outputs == {}
        with pytest.raises(RuntimeError, match="recorded nothing"):
            capture.pop()
        cnn(images)
        assert len(capture.pop()) == 2


def test_graph_mode_keeps_gradients(cnn, images):
    probes = select_probes(cnn, images[:1], ["conv1"])
    with ProbeCapture(cnn, probes, detach=False) as capture:
        cnn(images)
        feature = capture.pop()["conv1"]
    feature.sum().backward()
    assert cnn.conv1.weight.grad is not None and cnn.conv1.weight.grad.abs().sum() > 0
    assert cnn.head.weight.grad is None


def test_detach_mode_has_no_graph(cnn, images):
    probes = select_probes(cnn, images[:1], ["conv1"])
    with ProbeCapture(cnn, probes) as capture:
        cnn(images)
        assert not capture.pop()["conv1"].requires_grad


def test_capture_rejects_unknown_module(cnn, images):
    from lsa_train.analysis import Probe

    with pytest.raises(ValueError, match="'ghost'"):
        ProbeCapture(cnn, [Probe(name="ghost", module_name="ghost", call=1, index=0)])


def test_forward_until_captured_skips_later_layers(cnn, images):
    probes = select_probes(cnn, images[:1], ["conv1"])
    reached_head = []
    cnn.head.register_forward_hook(lambda *args: reached_head.append(True))
    with ProbeCapture(cnn, probes) as capture:
        out = capture.forward_until_captured(images)
        assert torch.allclose(out["conv1"], cnn.conv1(images))
        assert reached_head == []
        cnn(images)  # a normal forward afterwards runs to the end
        assert reached_head == [True]


class Residual(nn.Module):
    """``out = bn(conv(x)); out += x`` when ``add`` is on: the probed BatchNorm output changes in place."""

    def __init__(self, add: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.act = nn.ReLU()
        self.add = add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        if self.add:
            out += x
        return self.act(out).mean((2, 3))


def _outputs_seen(module: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    module.register_forward_hook(lambda _m, _i, o: seen.append(o))
    return seen


def test_outputs_modified_in_place_later_are_always_copied():
    torch.manual_seed(0)
    model = Residual(add=True).eval()
    x = torch.randn(4, 2, 5, 5)
    probes = select_probes(model, x[:1], ["bn"])
    expected = model.bn(model.conv(x)).detach()
    seen = _outputs_seen(model.bn)
    with ProbeCapture(model, probes, detach=False) as capture:
        for _ in range(3):
            model(x)
            recorded = capture.pop()["bn"]
            assert torch.allclose(recorded, expected, atol=1e-6)
            assert recorded.data_ptr() != seen[-1].data_ptr()


def test_outputs_left_alone_are_stored_without_a_copy_after_the_first_forward():
    torch.manual_seed(0)
    model = Residual(add=False).eval()
    x = torch.randn(4, 2, 5, 5)
    probes = select_probes(model, x[:1], ["bn"])
    seen = _outputs_seen(model.bn)
    with ProbeCapture(model, probes, detach=False) as capture:
        capture.forward_until_captured(x)  # stopped early: teaches nothing
        model(x)
        first = capture.pop()["bn"]
        model(x)
        second = capture.pop()["bn"]
    assert first.data_ptr() != seen[1].data_ptr()  # copied while unknown
    assert second.data_ptr() == seen[2].data_ptr()  # then the output itself
    assert torch.equal(first, second)


def test_an_uncopied_output_modified_later_raises_then_gets_copied():
    torch.manual_seed(0)
    model = Residual(add=False).eval()
    x = torch.randn(4, 2, 5, 5)
    probes = select_probes(model, x[:1], ["bn"])
    with ProbeCapture(model, probes, detach=False) as capture:
        model(x)
        capture.pop()
        model.add = True  # the forward changes: the stored output is now overwritten
        model(x)
        with pytest.raises(RuntimeError, match="probe 'bn' was modified in place after it was recorded"):
            capture.pop()
        model(x)
        assert torch.allclose(capture.pop()["bn"], model.bn(model.conv(x)), atol=1e-6)


class _FunctionalNet(nn.Module):
    """Activations as function calls: no activation module to hook."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.relu(self.conv(x)).flatten(1))


def test_functional_activations_fall_back_to_learnable_probes_with_a_warning() -> None:
    from lsa_train.analysis.probes import list_probes

    with pytest.warns(UserWarning, match="no activation modules .* probing the 2 conv/linear outputs"):
        names = list_probes(_FunctionalNet(), torch.zeros(1, 1, 8, 8))
    assert names == ["conv", "fc"]


class _HalfFunctionalNet(nn.Module):
    """GELU modules, and one ReLU applied as a function after ``conv2``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 8 * 8, 8)
        self.act2 = nn.GELU()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = torch.nn.functional.relu(self.bn2(self.conv2(x)))
        return self.head(self.act2(self.fc(x.flatten(1))))


def test_layers_behind_functional_activations_are_named_with_how_to_probe_them() -> None:
    from lsa_train.analysis.probes import list_probes

    model, x = _HalfFunctionalNet(), torch.zeros(1, 1, 8, 8)
    with pytest.warns(UserWarning) as caught:
        names = list_probes(model, x)
    assert names == ["act1", "act2"]  # conv2's output is never a candidate
    (note,) = [str(w.message) for w in caught]
    from lsa_train.analysis.probes import ProbeCoverageWarning, select_probes_and_notes

    assert caught[0].category is ProbeCoverageWarning
    assert "_HalfFunctionalNet: 1 conv/linear layer(s) feed activations applied as functions" in note
    assert "never MVL candidates: conv2;" in note and "probes='learnable'" in note
    assert "e.g. probes=['act1', 'act2', 'conv2']" in note
    assert list_probes(model, x, ["act1", "act2", "conv2"]) == ["act1", "conv2", "act2"]  # the hint works
    assert select_probes_and_notes(model, x, "learnable")[1] == []  # an explicit choice: no note
    selected, notes = select_probes_and_notes(model, x)
    assert [p.name for p in selected] == names and notes == [note]
    assert model.training  # the traced dry forward leaves the mode and no gradients behind
    assert all(p.grad is None for p in model.parameters())


def test_models_whose_activations_are_all_modules_get_no_coverage_note(cnn: nn.Module) -> None:
    from lsa_train.analysis.probes import select_probes_and_notes
    from lsa_train.models import create_model

    resnet = create_model("resnet18", num_classes=10, in_channels=3, input_size=(32, 32))
    for model, x in ((cnn, torch.zeros(1, 1, 8, 8)), (resnet, torch.zeros(1, 3, 32, 32))):
        assert select_probes_and_notes(model, x)[1] == []  # residual adds, BN and in-place ReLUs: all covered
