"""Drop-in replacement for the original ``LayerSustainabilityAnalysis`` 1.0.4 API.

Same constructor, attributes and numbers as the authors' package on its first call,
with its leaks fixed: hooks are removed after every call (the original adds hooks on
each call and never removes them, so from the second call on it returns every probe
more than once, slows down and grows), nothing goes through numpy, and CUDA tensors stay
on their device. As in the original, ``representation_tensors`` returns tensors with
gradient, the model runs in whatever mode it is in (the constructor puts it in eval mode),
and ``representation_comparisons`` always returns the relative error, whatever ``measure``
says, except for the two extensions ``"mse"`` and ``"cosine"`` (warned about once).
Comparisons of a model in eval mode are faster: no autograd graph, clean and perturbed
samples in one forward per cache-sized chunk, ``channels_last`` images on CPU.

Example:
    >>> from lsa_train.legacy import LayerSustainabilityAnalysis
    >>> lsa = LayerSustainabilityAnalysis(pretrained_model=model)
    >>> cms = lsa.representation_comparisons(img_clean=x, img_perturbed=x_adv)
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from lsa_train.analysis.layout import choose_channels_last, default_chunk_size, to_layout
from lsa_train.analysis.measures import DEFAULT_EPS, canonical_measure_name

# Per probe the chunks contribute sums, in float64: ||c - p||^2, ||c||^2, ||p||^2, <c, p> and the
# element count; each whole-batch measure is a function of them and computes only those it needs.
_NEEDED_SUMS = {"relative_error": (0, 1), "mse": (0, 4), "cosine": (0, 1, 2, 3)}


def _pair_sums(clean: torch.Tensor, perturbed: torch.Tensor, needed: Sequence[int]) -> torch.Tensor:
    a, b = clean.float(), perturbed.float()
    sums = torch.zeros(5, dtype=torch.float64, device=a.device)
    for index in needed:
        if index == 0:
            sums[0] = torch.linalg.vector_norm(a - b).double().square()
        elif index == 1:
            sums[1] = torch.linalg.vector_norm(a).double().square()
        elif index == 2:
            sums[2] = torch.linalg.vector_norm(b).double().square()
        elif index == 3:
            sums[3] = (a * b).sum(dtype=torch.float64)
        else:
            sums[4] = a.numel()
    return sums


def _relative_error(s: torch.Tensor) -> torch.Tensor:
    return s[0].sqrt() / s[1].sqrt().clamp_min(DEFAULT_EPS)


def _mse(s: torch.Tensor) -> torch.Tensor:
    return s[0] / s[4]


def _cosine(s: torch.Tensor) -> torch.Tensor:
    if s[0] == 0:  # identical tensors (zeros included) are at distance 0
        return torch.zeros((), dtype=s.dtype, device=s.device)
    return 1.0 - s[3] / (s[1].sqrt() * s[2].sqrt()).clamp_min(DEFAULT_EPS)


_WHOLE_BATCH_MEASURES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relative_error": _relative_error,
    "mse": _mse,
    "cosine": _cosine,
}

#: ``measure`` names that select a measure 1.0.4 does not have (1.0.4 returns the relative error for them).
EXTENSION_MEASURES: dict[str, str] = {"mse": "mse", "cosine": "cosine", "cosine_distance": "cosine"}
#: Names for the relative error that users of 1.0.4 pass (it ignores ``measure``; ``"MSE"`` is its default).
ORIGINAL_MEASURE_NAMES: frozenset[str] = frozenset(
    {"MSE", "L2", "l2", "relative-error", "relative_error", "re", "RE", "relative error"}
)


def legacy_measure(measure: str) -> str:
    """The measure :meth:`LayerSustainabilityAnalysis.representation_comparisons` computes for ``measure``.

    ``"mse"``, ``"cosine"`` (and ``"cosine_distance"``) select those extensions; every other string,
    including 1.0.4's default ``"MSE"`` and ``"L2"``, gives the relative error, as 1.0.4 does, except
    the names of :mod:`lsa_train.analysis.measures` that this whole-batch API cannot compute
    (``"relative_error_pairwise"``), which raise instead of silently giving the relative error.
    """
    if not isinstance(measure, str):
        raise ValueError(f"measure must be a string such as 'relative-error', 'MSE' or 'L2', got {measure!r}")
    if measure not in EXTENSION_MEASURES and measure not in ORIGINAL_MEASURE_NAMES:
        try:
            registered = canonical_measure_name(measure)
        except ValueError:  # not a measure of ours either: 1.0.4's behaviour, the relative error
            registered = None
        if registered is not None and registered not in _WHOLE_BATCH_MEASURES:
            raise ValueError(
                f"measure={measure!r} is a per-sample measure of lsa_train.analysis that LayerSustainabilityAnalysis "
                f"(whole-batch values) does not compute; choose one of {sorted(_WHOLE_BATCH_MEASURES)}, or use "
                f"lsa_train.analysis.analyze(model, clean, perturbed, measure={registered!r})"
            )
    return EXTENSION_MEASURES.get(measure, "relative_error")


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
        chunk_size: Samples per forward, clean and perturbed together (not in the original);
            ``None``: 64 on CPU, 512 on GPUs. Results do not depend on it, speed and peak
            memory do.

    Attributes:
        selected_probs: Class names of the probed modules (the original's spelling);
            edit it to probe other module types.
    """

    def __init__(self, pretrained_model: nn.Module, chunk_size: int | None = None) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.pretrained_model = pretrained_model
        self.chunk_size = chunk_size
        self._channels_last: dict[tuple[tuple[int, ...], str], bool] = {}
        self._warned: set[str] = set()
        self.pretrained_model.eval()
        self.selected_probs = ["ReLU", "ELU", "LeakyReLU"]

    def representation_tensors(self, img: torch.Tensor, verbose: bool = True) -> list[torch.Tensor]:
        """Outputs of the probed modules for ``img``, in the original's order.

        One forward in the model's current mode, under the caller's grad mode: as in 1.0.4 the
        tensors carry gradient (build a regularizer from them and call ``backward``). Each is a
        copy taken when the module ran, so a later in-place operation cannot change it.
        """
        modules = legacy_probe_modules(self.pretrained_model, self.selected_probs)
        if verbose:
            print(f"probing {len(modules)} module hooks: {[m._get_name() for m in modules]}")
        return self._capture(img, modules, lambda output: output.clone())

    def representation_comparisons(
        self,
        img_clean: torch.Tensor,
        img_perturbed: torch.Tensor,
        measure: str = "relative-error",
        verbose: bool = True,
    ) -> list[float]:
        """One comparison value per probe, with the whole batch inside the norm.

        The relative error ``||clean - perturbed||_F / ||clean||_F`` over the batch tensor of
        each probe, as the original computes: it ignores ``measure`` (default ``"MSE"``) and
        always computes this, so every name it was called with (``"MSE"``, ``"L2"``,
        ``"relative-error"``, ...) gives the relative error here too. Two extensions differ from
        1.0.4 and warn once per instance: ``"mse"`` and ``"cosine"``, applied to the flattened batch.

        A model in eval mode (every submodule) runs in chunks, each one forward of
        ``chunk_size // 2`` clean samples followed by their perturbed copies, and only sums
        (squared norms, dot product) are kept per probe, so no feature map of the whole batch
        is ever held; eval mode makes samples independent, so the values equal the
        whole-batch ones up to float rounding. A model with a submodule in train mode runs as
        in 1.0.4: one forward of the whole clean batch, then one of the perturbed batch (so
        BatchNorm uses each batch's statistics and updates its running ones as 1.0.4 does).
        """
        if img_clean.shape != img_perturbed.shape:
            raise ValueError(
                f"img_clean and img_perturbed differ in shape: {tuple(img_clean.shape)} vs "
                f"{tuple(img_perturbed.shape)}"
            )
        measure_name = legacy_measure(measure)
        self._warn_extension(measure, measure_name)
        finish, needed = _WHOLE_BATCH_MEASURES[measure_name], _NEEDED_SUMS[measure_name]
        modules = legacy_probe_modules(self.pretrained_model, self.selected_probs)
        if any(module.training for module in self.pretrained_model.modules()):
            totals = self._separate_forwards(img_clean, img_perturbed, modules, needed)
        else:
            totals = self._chunked_forwards(img_clean, img_perturbed, modules, needed)
        values = [float(finish(total)) for total in totals]
        if verbose:
            print(f"{len(values)} probes compared ({measure})")
        return values

    def _warn_extension(self, measure: str, measure_name: str) -> None:
        if measure_name == "relative_error" and measure not in ORIGINAL_MEASURE_NAMES and measure not in self._warned:
            self._warned.add(measure)
            warnings.warn(
                f"measure={measure!r} is not a name LayerSustainabilityAnalysis knows; like 1.0.4, which ignores "
                "measure, it returns the relative error ('mse' and 'cosine' select those measures)",
                UserWarning,
                stacklevel=3,
            )
        elif measure_name != "relative_error" and measure not in self._warned:
            self._warned.add(measure)
            warnings.warn(
                f"measure={measure!r} returns the {measure_name} of each probe; LayersSustainabilityAnalysis 1.0.4 "
                "ignores measure and returns the relative error (pass 'relative-error' or 'MSE' for 1.0.4's numbers)",
                UserWarning,
                stacklevel=3,
            )

    @torch.no_grad()
    def _chunked_forwards(
        self, img_clean: torch.Tensor, img_perturbed: torch.Tensor, modules: list[nn.Module], needed: Sequence[int]
    ) -> list[torch.Tensor]:
        totals: list[torch.Tensor] = []
        for clean_chunk, perturbed_chunk in self._chunks(img_clean, img_perturbed):

            def chunk_sums(output: torch.Tensor, half: int = clean_chunk.shape[0]) -> torch.Tensor:
                return _pair_sums(output[:half], output[half:], needed)

            # one forward of [clean; perturbed]: the hook sees both halves, nothing is copied
            sums = self._capture(torch.cat([clean_chunk, perturbed_chunk]), modules, chunk_sums)
            totals = sums if not totals else [a + b for a, b in zip(totals, sums)]
        return totals

    @torch.no_grad()
    def _separate_forwards(
        self, img_clean: torch.Tensor, img_perturbed: torch.Tensor, modules: list[nn.Module], needed: Sequence[int]
    ) -> list[torch.Tensor]:
        clean = self._capture(img_clean, modules, torch.Tensor.clone)
        perturbed = self._capture(img_perturbed, modules, torch.Tensor.clone)
        return [_pair_sums(a, b, needed) for a, b in zip(clean, perturbed)]

    def _chunks(self, clean: torch.Tensor, perturbed: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = max(1, (self.chunk_size or default_chunk_size(clean.device)) // 2)
        key = (tuple(clean.shape[1:]), clean.device.type)  # the layout trial runs once per input shape
        if key not in self._channels_last:
            self._channels_last[key] = choose_channels_last(self.pretrained_model, clean[:2], None)
        layout = self._channels_last[key]
        for start in range(0, clean.shape[0], step):
            yield (to_layout(clean[start : start + step], layout), to_layout(perturbed[start : start + step], layout))

    def _capture(
        self,
        img: torch.Tensor,
        modules: list[nn.Module],
        reduce: Callable[[torch.Tensor], torch.Tensor],
    ) -> list[torch.Tensor]:
        """One forward of ``img`` (caller's grad mode, model's mode); ``reduce(output)`` per hooked call."""
        repeats = Counter(id(m) for m in modules)
        outputs: list[torch.Tensor] = []

        def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            for _ in range(repeats[id(module)]):  # a module hooked twice reports twice, as in the original
                outputs.append(reduce(output))

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
