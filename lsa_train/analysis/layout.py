"""Input layout and chunk size for the analysis forwards.

On CPU, oneDNN convolutions run 1.2-2x faster on ``channels_last`` inputs and on small
chunks (the feature maps of a 64-sample chunk stay in cache; measured in
``experiments/bench``). A memory format changes the layout, never the values, so the
analysis may pick it freely, as long as the model accepts it: a ``view`` on a
non-contiguous tensor raises, so a short trial forward decides.
"""

from __future__ import annotations

import torch
from torch import nn

#: Samples per analysis forward when the caller gives none.
CPU_CHUNK = 64
ACCELERATOR_CHUNK = 512


def default_chunk_size(device: torch.device) -> int:
    """Samples per analysis forward on ``device``: small on CPU (cache), large elsewhere."""
    return CPU_CHUNK if device.type == "cpu" else ACCELERATOR_CHUNK


@torch.no_grad()
def accepts_channels_last(model: nn.Module, sample: torch.Tensor) -> bool:
    """Whether ``model`` runs on ``sample`` (``(N, C, H, W)``) in ``channels_last`` layout.

    Runs one forward of the first two samples; a model that reshapes with ``view`` fails
    and is then fed contiguous inputs. Errors that have nothing to do with the layout
    surface again in the caller's own forward.
    """
    try:
        model(sample[:2].contiguous(memory_format=torch.channels_last))
    except RuntimeError:
        return False
    return True


def choose_channels_last(model: nn.Module, sample: torch.Tensor, channels_last: bool | None) -> bool:
    """Resolves the ``channels_last`` switch: ``None`` means on for 4-D CPU inputs the model accepts."""
    if sample.ndim != 4:
        return False
    if channels_last is None:
        return sample.device.type == "cpu" and accepts_channels_last(model, sample)
    return channels_last


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in ``channels_last`` layout if asked, else unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
