"""Drop-in replacement for the original ``LayerSustainabilityAnalysis`` 1.0.4 API.

Same constructor, attributes and numbers as the authors' package on its first call,
with its leaks fixed: hooks are removed after every call (the original adds hooks on
each call and never removes them, so calls slow down and memory grows), nothing goes
through numpy, and CUDA tensors stay on their device.

Example:
    >>> from lsa_train.legacy import LayerSustainabilityAnalysis
    >>> lsa = LayerSustainabilityAnalysis(pretrained_model=model)
    >>> cms = lsa.representation_comparisons(img_clean=x, img_perturbed=x_adv)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from lsa_train.analysis.measures import get_measure


def legacy_probe_modules(model: nn.Module, class_names: Sequence[str]) -> list[nn.Module]:
    """The modules the original package hooks, in its registration order (repeats included).

    The original walks the direct children of each top-level child that is iterable
    (a ``Sequential``); at the first top-level child that is not iterable it hooks every
    matching non-``Sequential`` module in the whole model instead and stops. Modules
    matched in both passes are hooked twice, and so appear twice in its output.
    """
    wanted = set(class_names)
    hooked: list[nn.Module] = []
    for child in model._modules.values():
        try:
            members = list(child)  # type: ignore[call-overload]
            members = list(nn.ModuleList(members))
        except Exception:  # the original falls back on any error here
            hooked += [m for m in model.modules() if not isinstance(m, nn.Sequential) and m._get_name() in wanted]
            break
        hooked += [m for m in members if m._get_name() in wanted]
    return hooked


class LayerSustainabilityAnalysis:
    """The original API: probe activation outputs and compare clean vs perturbed inputs.

    Args:
        pretrained_model: The trained network; put in eval mode, as in the original.

    Attributes:
        selected_probs: Class names of the probed modules (the original's spelling);
            edit it to probe other module types.
    """

    def __init__(self, pretrained_model: nn.Module) -> None:
        self.pretrained_model = pretrained_model
        self.pretrained_model.eval()
        self.selected_probs = ["ReLU", "ELU", "LeakyReLU"]

    def representation_tensors(self, img: torch.Tensor, verbose: bool = True) -> list[torch.Tensor]:
        """Outputs of the probed modules for ``img``, in the original's order (detached copies)."""
        modules = legacy_probe_modules(self.pretrained_model, self.selected_probs)
        if verbose:
            print(f"probing {len(modules)} module hooks: {[m._get_name() for m in modules]}")
        return self._capture(img, modules)

    def representation_comparisons(
        self,
        img_clean: torch.Tensor,
        img_perturbed: torch.Tensor,
        measure: str = "relative-error",
        verbose: bool = True,
    ) -> list[float]:
        """One comparison value per probe, with the whole batch inside the norm.

        ``relative-error`` is ``||clean - perturbed||_F / ||clean||_F`` over the batch
        tensor of each probe, as the original computes (it ignores ``measure`` and
        always computes this). Other registered measures (``mse``, ``cosine``) are
        applied to the flattened batch.
        """
        if img_clean.shape != img_perturbed.shape:
            raise ValueError(
                f"img_clean and img_perturbed differ in shape: {tuple(img_clean.shape)} vs "
                f"{tuple(img_perturbed.shape)}"
            )
        measure_fn = get_measure(measure)
        modules = legacy_probe_modules(self.pretrained_model, self.selected_probs)
        half = img_clean.shape[0]

        def whole_batch_measure(output: torch.Tensor) -> torch.Tensor:
            # eval mode makes samples independent, so one forward of [clean; perturbed] suffices
            return measure_fn(output[:half].reshape(1, -1), output[half:].reshape(1, -1))[0]

        values = [float(v) for v in self._capture(torch.cat([img_clean, img_perturbed]), modules, whole_batch_measure)]
        if verbose:
            print(f"{len(values)} probes compared ({measure})")
        return values

    @torch.no_grad()
    def _capture(
        self,
        img: torch.Tensor,
        modules: list[nn.Module],
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        repeats = Counter(id(m) for m in modules)
        outputs: list[torch.Tensor] = []

        def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            value = reduce(output) if reduce is not None else output.detach().clone()
            outputs.extend([value] * repeats[id(module)])

        unique = list({id(m): m for m in modules}.values())
        handles = [m.register_forward_hook(hook) for m in unique]
        try:
            self.pretrained_model(img)
        finally:
            for handle in handles:
                handle.remove()
        return outputs

    @staticmethod
    def plot_representation_cm(
        plot_title: str = "LSA result : Comparison measure of model",
        plot_label: str = "measure",
        plot_style: str = "-o",
        lst_comparison_measures: Sequence[float] = (),
        xlabel: str = "layer",
        ylabel: str = "relative-error",
        save_img: str | Path | None = None,
        fig: object | None = None,
    ) -> None:
        """Adds one curve to the current pyplot figure, as the original; saves it if asked."""
        import matplotlib.pyplot as plt

        xs = list(range(len(lst_comparison_measures)))
        ys = [float(v) for v in lst_comparison_measures]
        plt.plot(xs, ys, plot_style, label=plot_label)
        plt.xticks(xs)
        plt.legend()
        plt.xlabel(xlabel)
        plt.ylabel(ylabel)
        plt.title(plot_title)
        plt.ylim([0, 2])
        for x, y in zip(xs, ys):
            if f"{y:.4f}" != "0.0000":
                plt.annotate(f"{y:.4f}", (x, y), textcoords="offset points", xytext=(0, 10), ha="center")
        if save_img:
            plt.savefig(save_img, bbox_inches="tight")
