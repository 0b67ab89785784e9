"""CIFAR-10 on the training device: one uint8 tensor, batch-level crop/flip, then normalise.

No per-image Python or PIL work: augmentation is one gather per batch, so the data pipeline
is never what the GPU waits for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class CropFlip:
    """Random crops of the padded images (shifts of up to `padding` pixels) and random
    horizontal flips, for a whole batch in one strided gather. The padding is black
    (`fill` "zero") or the image mirrored at its edge ("reflect", airbench's): black borders
    are a cue a ViT learns to look for (docs/faithfulness.md), a mirror has no edge to find.

    The images are stored once zero padded and, when flipping, once more mirrored (2x the
    memory; 0.4 GB for CIFAR-10's training set). A crop is then a window of a flattened
    padded image that starts at `dy * row + dx`, and a flip is the choice of copy: no
    per-pixel index maps, no second pass."""

    def __init__(self, x: Tensor, *, padding: int, flip: bool, fill: str = "zero"):
        n, c, h, w = x.shape
        self.n, self.shape, self.padding, self.flip = n, (c, h, w), padding, flip
        images = torch.cat([x, x.flip(-1)]) if flip else x
        assert fill in ("zero", "reflect"), f"unknown fill {fill!r}"
        mode = "reflect" if fill == "reflect" and padding else "constant"
        padded = F.pad(images, (padding,) * 4, mode=mode).flatten(2)  # (copies * n, C, row * (H + 2p))
        self.row = w + 2 * padding
        self.span = (h - 1) * self.row + w  # a crop, from its first pixel to its last
        self.windows = padded.unfold(2, self.span, 1)  # (copies * n, C, offsets, span), a view

    def __call__(self, idx: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 (B, C, H, W): images `idx`, each shifted and (maybe) mirrored at random."""
        b, (c, h, w), g, dev = len(idx), self.shape, generator, idx.device
        dy = torch.randint(0, 2 * self.padding + 1, (b,), generator=g, device=dev)
        dx = torch.randint(0, 2 * self.padding + 1, (b,), generator=g, device=dev)
        if self.flip:
            idx = idx + self.n * (torch.rand(b, generator=g, device=dev) < 0.5)
        crops = self.windows[idx, :, dy * self.row + dx]  # (B, C, span)
        return crops.as_strided((b, c, h, w), (c * self.span, self.span, self.row, 1))


def cutout(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """x (B, C, H, W), normalised, with a `size` x `size` square of each image set to 0 (the
    training set's mean colour), placed at random wholly inside it (airbench's cutout)."""
    b, _, h, w = x.shape
    g, dev = generator, x.device
    top = torch.randint(0, h - size + 1, (b, 1, 1, 1), generator=g, device=dev)
    left = torch.randint(0, w - size + 1, (b, 1, 1, 1), generator=g, device=dev)
    rows = torch.arange(h, device=dev).view(1, 1, h, 1) - top  # (B, 1, H, 1)
    cols = torch.arange(w, device=dev).view(1, 1, 1, w) - left  # (B, 1, 1, W)
    return x.masked_fill((rows >= 0) & (rows < size) & (cols >= 0) & (cols < size), 0)

