"""An iRPE with random tables (zero-initialised tables would hide every table path), shared by the iRPE tests."""
import torch

from zoo.pe.irpe import IRPE


def random_irpe(d, nh, method="product", mode="contextual", ratio=1.9, shared=True, skip=1, rpe_on="k", seed=0):
    pe = IRPE(d, nh, method=method, mode=mode, ratio=ratio, shared_head=shared, skip=skip, rpe_on=rpe_on)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pe.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return pe
