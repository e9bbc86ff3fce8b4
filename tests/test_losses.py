"""The one next-token loss: per-token values against torch's cross-entropy, read from the logits a slice at a time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from plastiscope.losses import token_losses


class LargestFloat32(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest float32 tensor any torch operation creates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def test_token_losses_of_bfloat16_logits_without_a_float32_copy():
    g = torch.Generator().manual_seed(0)
    batch, pos, vocab = 3, 100, 500
    logits = (torch.randn(batch, pos, vocab, generator=g) * 3).bfloat16()
    tokens = torch.randint(0, vocab, (batch, pos), generator=g)
    mask = torch.zeros(batch, pos, dtype=torch.bool)
    for row, length in enumerate((100, 37, 1)):
        mask[row, :length] = True
    with LargestFloat32() as mode:
        loss, target = token_losses(logits, tokens, mask)
    assert 0 < mode.largest <= logits.numel() // 8  # slices of positions, never the whole logits in float32
    reference = F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), tokens[:, 1:].reshape(-1), reduction="none").view(batch, pos - 1)
    assert target.tolist() == (mask[:, 1:] & mask[:, :-1]).tolist() and target.sum() == 99 + 36
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss[target], reference[target], rtol=1e-5, atol=1e-5)
    assert (loss[~target] == 0).all()
