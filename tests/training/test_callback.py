import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lsa_train.analysis import MVLHistoryTable
from lsa_train.attacks import PGD
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule, MVLRefreshCallback


def trainer_for(tmp_path, callbacks, **kwargs) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False, logger=False,
        accelerator="cpu", callbacks=callbacks, **kwargs,
    )


def relu_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def twin_relu_mlp() -> nn.Module:
    """Two activation probes with the same CM (the second ReLU gets a non-negative tensor and changes
    nothing): neither is above the mean, so the eta rule alone selects no probe."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.ReLU(), nn.Linear(16, 2))


def test_the_default_refresh_keeps_the_lsa_term_on_when_eta_selects_nothing(tmp_path, loaders):
    module = LSARegularizedModule(twin_relu_mlp(), attack=PGD(eps=0.1, steps=2))  # its own MVLRefreshCallback
    trainer = trainer_for(tmp_path, [], max_epochs=2, enable_checkpointing=False)
    trainer.fit(module, *loaders)
    refresh = next(cb for cb in trainer.callbacks if isinstance(cb, MVLRefreshCallback))
    assert [entry["mvl"] for entry in refresh.history] == [["1"], ["1"]]  # the most vulnerable (tie: the first)
    assert refresh.min_layers == 1
    # 192 samples / batch 32 = 6 steps per epoch, each with the term in its loss
    assert module.lsa_term_usage() == {"configured": True, "active_steps": 12, "training_steps": 12,
                                       "active_fraction": 1.0}
    # min_layers=0: Algorithm 1 alone, an empty MVL and a term that never ran, which the usage states
    module = LSARegularizedModule(twin_relu_mlp(), attack=PGD(eps=0.1, steps=2))
    trainer = trainer_for(tmp_path, [MVLRefreshCallback(min_layers=0, plot=False)], max_epochs=1,
                          enable_checkpointing=False)
    with pytest.warns(UserWarning, match="the MVL is empty"):
        trainer.fit(module, *loaders)
    assert module.mvl == [] and module.lsa_term_usage()["active_fraction"] == 0.0
    module = LSARegularizedModule(twin_relu_mlp(), attack=PGD(eps=0.1, steps=2), regularizer=None)
    assert module.lsa_term_usage()["configured"] is False


def test_refresh_follows_the_cm(tmp_path, loaders):
    model = relu_mlp()
    module = LSARegularizedModule(model, attack=PGD(eps=0.1, steps=2), regularizer=LayerwiseRegularizer(0.1))
    callback = MVLRefreshCallback(num_samples=32, top_k=1, measure="mse", plot=False, dirpath=tmp_path / "lsa")
    trainer = trainer_for(tmp_path, [callback], max_epochs=1, enable_checkpointing=False)
    trainer.fit(module, *loaders)
    with torch.no_grad():
        model[2].weight.mul_(100.0)  # probe "3" now moves 10^4 times more in MSE
    assert callback.refresh(trainer, module).mvl_names == ["3"]
    assert module.mvl == ["3"]
    with torch.no_grad():
        model[2].weight.mul_(1e-4)  # and now 10^4 times less than at first
    assert callback.refresh(trainer, module).mvl_names == ["1"]
    assert module.mvl == ["1"]
    assert [entry["mvl"] for entry in callback.history[-2:]] == [["3"], ["1"]]
    assert len(list((tmp_path / "lsa").glob("lsa_*.csv"))) == len(callback.history)
    table = MVLHistoryTable.read_csv(tmp_path / "lsa" / "mvl_history.csv")  # written even with plot=False
    assert table.mvl.sum(axis=0).tolist() == [1] * len(callback.history)


def test_callback_writes_figures_and_logs(tmp_path, loaders):
    module = LSARegularizedModule(relu_mlp(), attack=PGD(eps=0.1, steps=2), regularizer=LayerwiseRegularizer(0.1))
    callback = MVLRefreshCallback(num_samples=32, eta=0.0)
    trainer = L.Trainer(
        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False, max_epochs=2,
        logger=L.pytorch.loggers.CSVLogger(tmp_path), callbacks=[callback], enable_checkpointing=False,
    )
    trainer.fit(module, *loaders)
    figures = sorted(Path(trainer.log_dir, "lsa").glob("lsa_*.png"))
    assert len(figures) == 2  # fit start + the start of the second epoch
    metrics = Path(trainer.log_dir, "metrics.csv").read_text()
    assert "lsa/cm/1" in metrics and "lsa/mvl_size" in metrics
    assert module.mvl == callback.current_mvl


def test_fixed_mvl_is_validated(tmp_path, loaders):
    module = LSARegularizedModule(relu_mlp(), attack=PGD(eps=0.1, steps=1), regularizer=LayerwiseRegularizer(0.1))
    trainer = trainer_for(tmp_path, [MVLRefreshCallback(num_samples=16, fixed=["nope"], plot=False)], max_epochs=1)
    with pytest.raises(ValueError, match="MVL names probe 'nope', which the model lacks"):
        trainer.fit(module, *loaders)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"every_n_epochs": 0}, "every_n_epochs must be an integer >= 1, got 0"),
        ({"num_samples": 0}, "num_samples must be an integer >= 1, got 0"),
        ({"eta": -1.0}, "eta must be >= 0, got -1.0"),
        ({"top_k": 0}, "top_k must be an integer >= 1, got 0"),
        ({"perturbation": "cw"}, "unknown attack 'cw'"),
        ({"measure": "l1"}, "unknown measure 'l1'"),
    ],
)
def test_bad_callback_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        MVLRefreshCallback(**kwargs)


def test_checkpoint_round_trip_keeps_the_mvl(tmp_path, loaders):
    module = LSARegularizedModule(relu_mlp(), attack=PGD(eps=0.1, steps=2), regularizer=LayerwiseRegularizer(0.1))
    callback = MVLRefreshCallback(num_samples=32, top_k=1, plot=False)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer_for(tmp_path, [callback, checkpoint], max_epochs=1).fit(module, *loaders)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["lsa_train"]["mvl"] == module.mvl
    callback_state = next(v for k, v in saved["callbacks"].items() if k.startswith("MVLRefreshCallback"))
    assert callback_state["current_mvl"] == module.mvl and len(callback_state["history"]) == 1

    restored = LSARegularizedModule(relu_mlp(), attack=PGD(eps=0.1, steps=2), regularizer=LayerwiseRegularizer(0.1))
    new_callback = MVLRefreshCallback(num_samples=32, top_k=1, plot=False, every_n_epochs=5)
    trainer = trainer_for(tmp_path, [new_callback], max_epochs=2, enable_checkpointing=False)
    trainer.fit(restored, *loaders, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert restored.mvl == module.mvl
    assert new_callback.history[:1] == callback_state["history"]
    assert len(new_callback.history) == 1  # every_n_epochs=5: no refresh at the start of epoch 1


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree_on_mvl_and_weights(tmp_path):
    script = Path(__file__).with_name("ddp_script.py")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert [r["local_rank_env"] for r in ranks] == [0, 1]
    # each rank analyses its own held-out samples: only the broadcast can make the analyses agree
    assert ranks[0]["analysis_subset"] != ranks[1]["analysis_subset"]
    assert ranks[0]["mvl"] == ranks[1]["mvl"] and ranks[0]["mvl"]
    assert ranks[0]["history"] == ranks[1]["history"]  # same analysis numbers, not only the same choice
    assert ranks[0]["weights"] == ranks[1]["weights"]  # AWP restores the weights before the averaged step
    for rank in ranks:  # AWP ran in epoch 1 only (warmup 1): 192 samples / 2 ranks / batch 32 = 3 steps
        assert rank["awp_epochs"] == [1, 1, 1] and rank["awp_restored"]
    assert ranks[0]["val_acc_clean"] == pytest.approx(ranks[1]["val_acc_clean"])
    # the epoch's training losses are averaged over the ranks (sync_dist), not each rank's own shard
    assert ranks[0]["train_epoch_means"] == ranks[1]["train_epoch_means"]


def test_figures_are_written_off_the_training_thread(tmp_path, loaders, monkeypatch):
    import threading

    from lsa_train.training import callbacks as callbacks_module

    threads: list[str] = []
    real_plot = callbacks_module.plot_layer_curves

    def recording_plot(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real_plot(*args, **kwargs)

    monkeypatch.setattr(callbacks_module, "plot_layer_curves", recording_plot)
    module = LSARegularizedModule(relu_mlp(), attack=PGD(eps=0.1, steps=1), regularizer=LayerwiseRegularizer(0.1))
    callback = MVLRefreshCallback(num_samples=16, top_k=1, dirpath=tmp_path / "lsa")
    trainer_for(tmp_path, [callback], max_epochs=2, enable_checkpointing=False).fit(module, *loaders)
    assert len(threads) == 2 and all(name.startswith("lsa-plot") for name in threads)
    assert len(list((tmp_path / "lsa").glob("lsa_*.png"))) == 2  # all written by the time fit returns
    assert (tmp_path / "lsa" / "mvl_history.png").is_file()


def test_module_brings_an_rng_state_callback_unless_the_trainer_has_one(tmp_path, loaders):
    from lsa_train.training import RNGStateCallback

    def rng_callbacks(callbacks):
        module = LSARegularizedModule(relu_mlp(), attack=PGD(eps=0.1, steps=1), regularizer=None)
        trainer = trainer_for(tmp_path, callbacks, fast_dev_run=True)
        trainer.fit(module, *loaders)
        return [cb for cb in trainer.callbacks if isinstance(cb, RNGStateCallback)]

    assert len(rng_callbacks([])) == 1
    mine = RNGStateCallback()
    assert rng_callbacks([mine]) == [mine]  # the user's own instance is kept, not replaced


def test_datamodule_shuffle_generator_state_travels_in_the_checkpoint():
    from lsa_train.data import DigitsDataModule

    def order(dm):
        return next(iter(dm.train_dataloader()))[1]

    uninterrupted = DigitsDataModule(batch_size=64)
    order(uninterrupted)  # epoch 0
    state = uninterrupted.state_dict()
    resumed = DigitsDataModule(batch_size=64)
    resumed.load_state_dict(state)  # before setup(), as Lightning does on resume
    epoch_1 = order(resumed)
    assert torch.equal(epoch_1, order(uninterrupted))
    assert not torch.equal(epoch_1, order(DigitsDataModule(batch_size=64)))  # not a freshly seeded order


def test_refresh_perturbs_in_the_training_attack_norm(tmp_path, loaders):
    from lsa_train.analysis.analyze import compute_cm
    from lsa_train.attacks import PGDL2, create_attack

    model = relu_mlp()
    module = LSARegularizedModule(model, attack=PGDL2(eps=0.5, steps=2), regularizer=LayerwiseRegularizer(0.1))
    callback = MVLRefreshCallback(num_samples=32, top_k=1, plot=False)
    trainer = trainer_for(tmp_path, [callback], max_epochs=1, limit_train_batches=1, enable_checkpointing=False)
    trainer.fit(module, *loaders)
    x, y = callback._subset
    result = callback.refresh(trainer, module)
    assert result.metadata["norm"] == "l2" and result.metadata["eps"] == 0.5
    # the analysis perturbation is L2 PGD-5 at 0.5 with the refresh's seed, not Linf PGD at 0.5
    l2 = create_attack("pgd", eps=0.5, alpha=0.5 / 4, steps=5, norm="l2", seed=callback.seed + 1)(model, x, y)
    torch.testing.assert_close(result.cm, compute_cm(model, module.probes, x, l2, measure="relative_error"))
    given = MVLRefreshCallback(num_samples=32, top_k=1, plot=False, eps=0.1)  # an explicit budget keeps pgd's Linf
    assert given.refresh(trainer, module).metadata["norm"] == "linf"
    with pytest.raises(ValueError, match="perturbation='fgsm' is a linf attack, but eps comes from the training"):
        MVLRefreshCallback(num_samples=32, perturbation="fgsm", plot=False).refresh(trainer, module)


def test_refresh_without_validation_data_warns_once(tmp_path, loaders):
    module = LSARegularizedModule(relu_mlp(), attack=PGD(eps=0.1, steps=1), regularizer=LayerwiseRegularizer(0.1))
    callback = MVLRefreshCallback(num_samples=16, top_k=1, plot=False)
    trainer = trainer_for(tmp_path, [callback], max_epochs=2, enable_checkpointing=False)
    with pytest.warns(UserWarning, match="no validation data") as record:
        trainer.fit(module, loaders[0])
    assert len(callback.history) == 2
    messages = [str(w.message) for w in record if "MVLRefreshCallback" in str(w.message)]
    assert len(messages) == 1 and "first 16 training samples" in messages[0] and "val_dataloaders" in messages[0]
