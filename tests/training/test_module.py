import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsa_train.analysis import ProbeCapture, select_probes
from lsa_train.analysis.measures import relative_error
from lsa_train.attacks import APGD, FGSMRS, PGD, NoAttack, TRADESAttack, create_attack
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule, NonFiniteLossError

# training_step is called directly in some tests, without a Trainer to log to
pytestmark = pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`:UserWarning")


def quiet_trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def step_loss_and_grads(module: LSARegularizedModule, x, y, seed: int = 7):
    torch.manual_seed(seed)
    module.model.zero_grad(set_to_none=True)
    loss = module.training_step((x, y), 0)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.model.parameters()]


def test_gamma_zero_equals_plain_adversarial_training(mlp_a, moons):
    x, y = moons[0][:32], moons[1][:32]
    attack = PGD(eps=0.1, steps=3)
    module = LSARegularizedModule(mlp_a, attack=attack, regularizer=LayerwiseRegularizer(gamma=0.0), mvl=[0, 2])
    loss, grads = step_loss_and_grads(module, x, y)
    torch.manual_seed(7)
    mlp_a.zero_grad(set_to_none=True)
    expected = F.cross_entropy(mlp_a(attack(mlp_a, x, y)), y)
    expected.backward()
    assert torch.equal(loss, expected.detach())
    for got, want in zip(grads, (p.grad for p in mlp_a.parameters())):
        assert torch.equal(got, want)


def test_lr_term_adds_gamma_times_relative_error(mlp_a, moons):
    x, y = moons[0][:32], moons[1][:32]
    attack = PGD(eps=0.1, steps=3)
    module = LSARegularizedModule(mlp_a, attack=attack, regularizer=LayerwiseRegularizer(gamma=[0.5, 2.0]), mvl=[0, 2])
    loss, _ = step_loss_and_grads(module, x, y)
    assert module.mvl == ["1", "5"]
    torch.manual_seed(7)
    x_adv = attack(mlp_a, x, y)
    probes = select_probes(mlp_a, x[:1])
    with ProbeCapture(mlp_a, [probes[0], probes[2]]) as capture:
        mlp_a(x)
        clean = capture.pop()
        logits = mlp_a(x_adv)
        adv = capture.pop()
    expected = (
        F.cross_entropy(logits, y)
        + 0.5 * relative_error(clean["1"], adv["1"]).mean()
        + 2.0 * relative_error(clean["5"], adv["5"]).mean()
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_lr_gradient_reaches_only_layers_below_the_probe(mlp_a, moons):
    x, y = moons[0][:32], moons[1][:32]
    x_adv = PGD(eps=0.1, steps=3)(mlp_a, x, y)
    regularizer = LayerwiseRegularizer(gamma=1.0)
    probes = select_probes(mlp_a, x[:1])
    with ProbeCapture(mlp_a, [probes[1]], detach=False) as capture:
        mlp_a(x)
        clean = capture.pop()
        mlp_a(x_adv)
        adv = capture.pop()
    term, per_probe = regularizer(clean, adv, ["3"])
    grads = torch.autograd.grad(term, [mlp_a[0].weight, mlp_a[2].weight, mlp_a[4].weight], allow_unused=True)
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert grads[2] is None
    assert per_probe["3"] > 0


def test_stop_clean_grad_removes_the_clean_branch(mlp_a, moons):
    x, y = moons[0][:16], moons[1][:16]
    x_adv = PGD(eps=0.1, steps=2)(mlp_a, x, y)
    clean_feat = mlp_a[:2](x)
    adv_feat = mlp_a[:2](x_adv)
    term, _ = LayerwiseRegularizer(1.0, stop_clean_grad=True)({"1": clean_feat}, {"1": adv_feat}, ["1"])
    full, _ = LayerwiseRegularizer(1.0)({"1": clean_feat}, {"1": adv_feat}, ["1"])
    assert term.item() == pytest.approx(full.item())
    (g_stop,) = torch.autograd.grad(term, clean_feat, allow_unused=True)
    (g_full,) = torch.autograd.grad(full, clean_feat)
    assert g_stop is None and g_full.abs().sum() > 0


def test_regularizer_is_finite_on_zero_representations():
    clean = torch.zeros(4, 3, requires_grad=True)
    adv = torch.zeros(4, 3, requires_grad=True)
    term, _ = LayerwiseRegularizer(1.0)({"p": clean}, {"p": adv}, ["p"])
    term.backward()
    assert term.item() == 0.0 and torch.isfinite(clean.grad).all() and torch.isfinite(adv.grad).all()


def test_no_hooks_while_the_attack_runs(mlp_a, moons):
    seen: list[int] = []

    class SpyAttack(PGD):
        def perturb(self, model, images, labels):
            seen.append(sum(len(m._forward_hooks) for m in model.modules()))
            return super().perturb(model, images, labels)

    module = LSARegularizedModule(
        mlp_a, attack=SpyAttack(eps=0.1, steps=2), regularizer=LayerwiseRegularizer(1.0), mvl=[1]
    )
    module.training_step((moons[0][:16], moons[1][:16]), 0)
    assert seen == [0]
    assert sum(len(m._forward_hooks) for m in mlp_a.modules()) == 0


def test_only_mvl_probes_are_hooked(mlp_a, moons):
    counts: list[int] = []
    original_forward = mlp_a[6].forward

    def spy(x):
        counts.append(sum(len(m._forward_hooks) for m in mlp_a.modules()))
        return original_forward(x)

    mlp_a[6].forward = spy
    module = LSARegularizedModule(mlp_a, attack=PGD(eps=0.1, steps=1), regularizer=LayerwiseRegularizer(1.0), mvl=[2])
    module.training_step((moons[0][:8], moons[1][:8]), 0)
    # probe discovery and the attack run hook-free; the clean forward stops after probe 2 and
    # never reaches the head; the adversarial forward sees exactly one hook: probe 2's
    assert counts == [0, 0, 1]


def test_trades_reuses_the_clean_forward(mlp_a, moons):
    calls = []
    mlp_a.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    module = LSARegularizedModule(
        mlp_a, attack=TRADESAttack(eps=0.1, steps=2), base_loss="trades", regularizer=LayerwiseRegularizer(1.0), mvl=[0]
    )
    module.ensure_probes(moons[0][:8])
    calls.clear()
    module.training_step((moons[0][:8], moons[1][:8]), 0)
    # attack: 1 clean prediction + 2 steps; outer step: exactly one clean and one adversarial forward
    assert len(calls) == 3 + 2


def test_concat_mode_matches_separate_forwards(mlp_a, moons):
    x, y = moons[0][:16], moons[1][:16]
    kwargs = dict(attack=PGD(eps=0.1, steps=2), regularizer=LayerwiseRegularizer(0.3), mvl=[1])
    separate, _ = step_loss_and_grads(LSARegularizedModule(mlp_a, **kwargs), x, y)
    joint, _ = step_loss_and_grads(LSARegularizedModule(mlp_a, concat_clean_adv=True, **kwargs), x, y)
    assert joint.item() == pytest.approx(separate.item(), rel=1e-5)


def test_concat_mode_refused_with_batchnorm():
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="concat_clean_adv=True would mix"):
        LSARegularizedModule(model, attack=PGD(eps=0.1), regularizer=LayerwiseRegularizer(1.0), concat_clean_adv=True)


ATTACK_CASES = [
    ("normal", None),
    ("ce", PGD(eps=0.1, steps=2)),
    ("ce", FGSMRS(eps=0.1)),
    ("ce", create_attack("fgsm", eps=0.1)),
    ("ce", APGD(eps=0.1, steps=3)),
    ("ce", PGD(eps=0.3, steps=2, norm="l2")),
    ("trades", TRADESAttack(eps=0.1, steps=2)),
]


@pytest.mark.parametrize(
    ("loss", "attack"), ATTACK_CASES, ids=[f"{loss}-{type(a).__name__}" for loss, a in ATTACK_CASES]
)
def test_fast_dev_run_with_each_attack_and_loss(tmp_path, mlp_a, loaders, loss, attack):
    regularizer = None if attack is None else LayerwiseRegularizer(0.1)
    module = LSARegularizedModule(mlp_a, attack=attack, base_loss=loss, regularizer=regularizer, mvl=[2])
    trainer = quiet_trainer(tmp_path, fast_dev_run=True)
    trainer.fit(module, *loaders)
    assert trainer.state.finished
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    metrics = trainer.test(module, loaders[1], verbose=False)[0]
    assert metrics["test/rg_score"] == pytest.approx(
        100 * sum(metrics[f"test/acc_fgsm_{e:g}"] for e in (0, 0.1, 0.2, 0.3, 0.4, 0.5)), rel=1e-5
    )


def test_validation_reports_clean_and_pgd_accuracy(tmp_path, mlp_a, loaders):
    # a weak training attack (steps of eps / 4): two epochs reach a clean accuracy well above chance
    module = LSARegularizedModule(mlp_a, attack=PGD(eps=0.1, alpha=0.025, steps=2), regularizer=None)
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(module, *loaders)
    metrics = trainer.callback_metrics
    assert 0.5 < metrics["val/acc_clean"] <= 1.0
    assert metrics["val/acc_pgd"] <= metrics["val/acc_clean"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"base_loss": "hinge"}, "unknown base loss 'hinge'; choose one of \\['ce', 'trades', 'mart', 'normal'\\]"),
        ({"attack": "pgd"}, "attack must be an lsa_train.attacks.Attack"),
        ({"base_loss": "trades", "attack": None}, "base_loss='trades' needs an attack"),
        ({"attack": None}, "base_loss='ce' needs an attack .*got attack=None"),
        ({"attack": NoAttack(eps=0.0)}, "base_loss='ce' needs an attack .*got attack=NoAttack"),
        ({"regularizer": LayerwiseRegularizer(1.0), "base_loss": "normal"}, "needs an attack"),
        ({"regularizer": "lsa"}, "regularizer must be a LayerwiseRegularizer or None, got str"),
        (
            {"regularizer": LayerwiseRegularizer(1.0, checkpoint_clean=True), "concat_clean_adv": True},
            "checkpoint_clean=True recomputes a separate clean forward",
        ),
        (
            {"regularizer": LayerwiseRegularizer(1.0, checkpoint_clean=True, stop_clean_grad=True)},
            "checkpoint_clean=True has nothing to recompute with stop_clean_grad=True",
        ),
        ({"trades_beta": -1.0}, "trades_beta must be a finite number >= 0"),
        ({"test_eps_grid": [0, -0.1]}, "test_eps_grid values must be finite and >= 0"),
    ],
)
def test_bad_module_arguments(mlp_a, kwargs, error):
    with pytest.raises(ValueError, match=error):
        LSARegularizedModule(mlp_a, **kwargs)


def test_bad_regularizer_and_attack_arguments():
    with pytest.raises(ValueError, match="gamma \\(lambda\\) must be a finite number >= 0, got -1"):
        LayerwiseRegularizer(gamma=-1)
    with pytest.raises(ValueError, match="unknown measure 'l9'"):
        LayerwiseRegularizer(measure="l9")
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        create_attack("cw", eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        PGD(eps=-0.1)
    with pytest.raises(ValueError, match="steps"):
        PGD(eps=0.1, steps=0)


def test_mvl_errors_name_the_probe(mlp_a, moons):
    module = LSARegularizedModule(mlp_a, attack=PGD(eps=0.1, steps=1), regularizer=LayerwiseRegularizer([1.0, 2.0]))
    module.ensure_probes(moons[0])
    with pytest.raises(
        ValueError, match="MVL names probe 'layer9', which the model lacks; probes are \\['1', '3', '5'\\]"
    ):
        module.set_mvl(["layer9"])
    with pytest.raises(ValueError, match="MVL index 7 is out of range"):
        module.set_mvl([7])
    with pytest.raises(ValueError, match="gamma \\(lambda\\) has 2 values but the MVL has 1 probes"):
        module.set_mvl([0])
    module.set_mvl([0, "5"])
    assert module.mvl == ["1", "5"]


def test_empty_mvl_warns_or_fails_when_strict(mlp_a, moons):
    batch = (moons[0][:8], moons[1][:8])
    module = LSARegularizedModule(mlp_a, attack=PGD(eps=0.1, steps=1), regularizer=LayerwiseRegularizer(1.0), mvl=[])
    with pytest.warns(UserWarning, match="the MVL is empty"):
        loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    strict = LSARegularizedModule(
        mlp_a, attack=PGD(eps=0.1, steps=1), regularizer=LayerwiseRegularizer(1.0), mvl=[], strict_mvl=True
    )
    with pytest.raises(ValueError, match="MVL is empty"):
        strict.training_step(batch, 0)


def test_first_batch_checks(mlp_a, moons):
    x, y = moons[0][:8], moons[1][:8]
    module = LSARegularizedModule(mlp_a, attack=PGD(eps=0.1, steps=1), regularizer=None, num_classes=3)
    with pytest.raises(ValueError, match="model outputs 2 logits but the data has num_classes=3"):
        module.training_step((x, y), 0)
    module = LSARegularizedModule(mlp_a, attack=NoAttack(eps=0.0), base_loss="normal")
    with pytest.raises(ValueError, match="labels must lie in \\[0, 1\\]"):
        module.training_step((x, y + 5), 0)


def test_inputs_outside_unit_range_warn_once_on_the_first_batch(mlp_a, moons):
    """Normalized data (here (x - 0.5) / 0.25) is named at once, and only once."""
    x, y = moons  # each feature spans exactly [0, 1]
    module = LSARegularizedModule(mlp_a, attack=PGD(eps=0.1, steps=1), regularizer=None)
    with pytest.warns(UserWarning, match=r"training inputs leave \[0, 1\] \(min -2, max 2\)") as caught:
        module.training_step(((x - 0.5) / 0.25, y), 0)
        module.training_step(((x - 0.5) / 0.25, y), 1)
        module.on_train_epoch_end()
    assert sum("training inputs leave" in str(w.message) for w in caught) == 1
    assert module.input_range_warning is not None and "model.mean / model.std" in module.input_range_warning


def test_a_later_batch_outside_unit_range_is_named_at_epoch_end(tmp_path, mlp_a, moons, recwarn):
    """Only the first batch is read on the host at once; later batches are accumulated on the device and
    read at the epoch's end (no host sync per step)."""
    x, y = moons
    x = x.clone()
    x[96:128] *= 3.0  # the fourth and last batch only (no shuffle) goes up to 3
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:128], y[:128]), batch_size=32)
    module = LSARegularizedModule(mlp_a, attack=PGD(eps=0.1, steps=1), regularizer=None)
    module.training_step((x[:32], y[:32]), 0)
    assert module.input_range_warning is None  # the first batch is in [0, 1]
    quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(module, train)
    assert module.input_range_warning is not None
    assert f"(min 0, max {float(x[:128].max()):.4g})" in module.input_range_warning
    assert sum("training inputs leave" in str(w.message) for w in recwarn) == 1

    clean = LSARegularizedModule(mlp_a, attack=PGD(eps=0.1, steps=1), regularizer=None)
    inside = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(moons[0][:64], moons[1][:64]), batch_size=32)
    quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(clean, inside)
    assert clean.input_range_warning is None


def test_non_finite_loss_stops_naming_the_step_and_keeps_checkpoints(tmp_path, loaders):
    class Exploding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            out = self.net(x)
            return out * float("nan") if self.trainer_epoch >= 1 else out

    model = Exploding()
    model.trainer_epoch = 0
    module = LSARegularizedModule(model, attack=NoAttack(eps=0.0), base_loss="normal")

    class EpochFlag(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            model.trainer_epoch = trainer.current_epoch

    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[EpochFlag(), checkpoint])
    with pytest.raises(NonFiniteLossError, match="non-finite training loss \\(nan\\) at global step 6 \\(epoch 1"):
        trainer.fit(module, loaders[0])
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


# -- defaults: LSARegularizedModule(model) alone ---------------------------------------------------
def test_module_alone_is_pgd10_at_8_255_with_the_lsa_term():
    module = LSARegularizedModule(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)))
    attack = module.attack
    assert isinstance(attack, PGD) and attack.norm == "linf" and attack.steps == 10
    assert attack.eps == pytest.approx(8 / 255) and attack.alpha == pytest.approx(2 / 255)
    assert module.regularizer is not None and module.regularizer.gamma == 0.1
    assert module.auto_refresh_mvl
    normal = LSARegularizedModule(nn.Linear(2, 2), base_loss="normal")  # no attack, hence no LSA term
    assert isinstance(normal.attack, NoAttack) and normal.regularizer is None and not normal.auto_refresh_mvl


@pytest.mark.parametrize("case", ["alone", "own_callback", "fixed_mvl", "no_regularizer"])
def test_module_brings_an_mvl_refresh_only_when_needed(tmp_path, mlp_a, loaders, case):
    from lsa_train.training import MVLRefreshCallback

    kwargs = {"fixed_mvl": {"mvl": [2]}, "no_regularizer": {"regularizer": None}}.get(case, {})
    module = LSARegularizedModule(mlp_a, **kwargs)
    mine = [MVLRefreshCallback(num_samples=16, top_k=1, plot=False)] if case == "own_callback" else []
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=mine)
    trainer.fit(module, *loaders)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    refresh = [cb for cb in trainer.callbacks if isinstance(cb, MVLRefreshCallback)]
    if case in ("fixed_mvl", "no_regularizer"):
        assert refresh == []
        assert module.mvl == (["5"] if case == "fixed_mvl" else [])
        return
    assert refresh == mine if mine else len(refresh) == 1
    assert [entry["epoch"] for entry in refresh[0].history] == [0, 1]  # at fit start and each epoch
    assert module.mvl == refresh[0].current_mvl


def test_base_loss_function_raises_value_errors():
    from lsa_train.training import base_loss

    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="base loss 'ce' needs adversarial logits, got None"):
        base_loss("ce", y, None, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="base loss 'trades' needs clean logits"):
        base_loss("trades", y, torch.zeros(2, 2), None)
    with pytest.raises(ValueError, match="base loss 'mart' needs clean logits"):
        base_loss("mart", y, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="unknown base loss 'madry'"):
        base_loss("madry", y, torch.zeros(2, 2))


# -- derived attacks keep the training norm -----------------------------------------------------------
@pytest.mark.parametrize(
    "attack", [PGD(eps=0.5, steps=2, norm="l2"), create_attack("pgd_l2", eps=0.5), APGD(eps=0.5, norm="l2", steps=2)]
)
def test_default_evaluation_attacks_keep_an_l2_training_norm(mlp_a, attack):
    module = LSARegularizedModule(mlp_a, attack=attack, regularizer=None)
    for derived, steps in ((module.val_attack, 10), (module.test_attack, 20)):
        assert isinstance(derived, PGD) and derived.norm == "l2" and derived.eps == 0.5 and derived.steps == steps
    linf = LSARegularizedModule(mlp_a, attack=PGD(eps=0.1, steps=2), regularizer=None)
    assert linf.val_attack.norm == "linf" and linf.test_attack.norm == "linf"


# -- TRADES with the clean-branch switches ----------------------------------------------------------
def trades_module(mlp_a, **regularizer_kwargs) -> LSARegularizedModule:
    return LSARegularizedModule(
        mlp_a, attack=TRADESAttack(eps=0.1, steps=2), base_loss="trades", mvl=[1],
        regularizer=LayerwiseRegularizer(0.5, **regularizer_kwargs),
    )


def test_trades_stop_clean_grad_only_cuts_the_lsa_clean_branch(mlp_a, moons):
    from lsa_train.training import trades_kl

    x, y = moons[0][:32], moons[1][:32]
    module = trades_module(mlp_a, stop_clean_grad=True)
    loss, grads = step_loss_and_grads(module, x, y)
    torch.manual_seed(7)
    x_adv = module.attack(mlp_a, x, y)
    probe = select_probes(mlp_a, x[:1])[1]
    mlp_a.zero_grad(set_to_none=True)
    with ProbeCapture(mlp_a, [probe], detach=False) as capture:
        logits_clean = mlp_a(x)
        clean = capture.pop()[probe.name]
        logits_adv = mlp_a(x_adv)
        adv = capture.pop()[probe.name]
    expected = (
        F.cross_entropy(logits_clean, y) + 6.0 * trades_kl(logits_clean, logits_adv)
        + 0.5 * relative_error(clean.detach(), adv).mean()  # only the LSA term's clean side is constant
    )
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for got, want in zip(grads, (p.grad for p in mlp_a.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stop_clean_grad", [False, True])
def test_trades_checkpoint_clean_recomputes_and_keeps_the_gradients(mlp_a, moons, stop_clean_grad):
    x, y = moons[0][:32], moons[1][:32]
    forwards: list[int] = []
    mlp_a[0].register_forward_hook(lambda *_: forwards.append(1))
    _, plain = step_loss_and_grads(trades_module(mlp_a, stop_clean_grad=stop_clean_grad), x, y)
    module = trades_module(mlp_a, stop_clean_grad=stop_clean_grad, checkpoint_clean=True)
    torch.manual_seed(7)
    mlp_a.zero_grad(set_to_none=True)
    loss = module.training_step((x, y), 0)
    forwards.clear()
    loss.backward()
    assert len(forwards) == 1  # the clean forward ran again in the backward
    for got, want in zip((p.grad for p in mlp_a.parameters()), plain):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
