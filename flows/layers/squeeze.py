"""Volume-preserving reshapes: space-to-depth squeeze and flattening."""

from __future__ import annotations

import torch

from flows.layers.base import InvertibleLayer


class Squeeze(InvertibleLayer):
    r"""Space-to-depth: [B, C, H, W] -> [B, 4C, H/2, W/2]; each 2×2 patch becomes 4 channels.

    A permutation, so log|det| = 0.

    Reference: Dinh et al., Real NVP (2016), section 3.6.
    """

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, height, width = h.shape
        if height % 2 or width % 2:
            raise ValueError(f"Expected even height and width to squeeze, got {height}x{width}.")
        h = h.view(b, c, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return h.reshape(b, 4 * c, height // 2, width // 2), h.new_zeros(b)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        b, c4, height, width = h.shape
        h = h.view(b, c4 // 4, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
        return h.reshape(b, c4 // 4, 2 * height, 2 * width)


class Flatten(InvertibleLayer):
    """[B, *shape] -> [B, prod(shape)] (NICE works on the flattened image); log|det| = 0."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(h.shape[1:]) != self.shape:
            raise ValueError(f"Expected shape {self.shape}, got {tuple(h.shape[1:])}.")
        return h.reshape(h.shape[0], -1), h.new_zeros(h.shape[0])

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return h.reshape(h.shape[0], *self.shape)


class OrderedSqueeze(Squeeze):
    r"""Real NVP's ordered space-to-depth: [B, C, H, W] -> [B, 4C, H/2, W/2], channel k·C + c
    holding position k of each 2×2 patch of colour c, positions in the order (top-left,
    bottom-right, top-right, bottom-left).

    So the first 2C channels are one colour of the spatial checkerboard (all colours) and the
    last 2C the other: a channel-wise mask or a factor-out split after it splits the image by
    checkerboard, not by colour (the plain `Squeeze` puts R and half of G in the first half
    of an RGB image). A permutation, so log|det| = 0.

    Reference: Dinh et al., Real NVP (2016), section 3.6; `squeeze_2x2_ordered` in the
    authors' code (tensorflow/models, research/real_nvp/real_nvp_utils.py).
    """

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, logdet = super().forward(h)
        return out[:, ordered_channels(h.shape[1], h.device)], logdet

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        undo = torch.argsort(ordered_channels(h.shape[1] // 4, h.device))
        return super().inverse(h[:, undo])


class SqueezeOrder(InvertibleLayer):
    r"""The plain squeeze's channels [B, 4C, H, W] in the ordered squeeze's order: the same as
    undoing `Squeeze` and applying `OrderedSqueeze`, so a factor-out after it keeps one colour
    of the spatial checkerboard (all image channels). A permutation, so log|det| = 0.

    Reference: Dinh et al., Real NVP (2016), section 3.6; in the authors' code
    (`real_nvp_multiscale_dataset.py`) the channel-wise couplings follow the plain squeeze and
    `squeeze_2x2_ordered` is applied only to factor out half.
    """

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if h.shape[1] % 4:
            raise ValueError(f"Expected a multiple of 4 channels, got {h.shape[1]}.")
        return h[:, ordered_channels(h.shape[1] // 4, h.device)], h.new_zeros(h.shape[0])

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, torch.argsort(ordered_channels(h.shape[1] // 4, h.device))]


#: Index of each 2×2 position (row-major: TL, TR, BL, BR) in the plain squeeze, by rank.
ORDERED_POSITIONS = (0, 3, 1, 2)


def ordered_channels(channels: int, device: torch.device) -> torch.Tensor:
    """Plain-squeeze channel feeding each ordered-squeeze channel, [4C] for C image channels."""
    colour = torch.arange(channels, device=device)
    position = torch.tensor(ORDERED_POSITIONS, device=device)
    return (4 * colour[None, :] + position[:, None]).reshape(-1)
