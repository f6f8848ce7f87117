"""A tiny variational autoencoder on the 8x8 digits (the Adam paper's Fig. 4 analogue,
for the bias-correction experiment).

Pixels are scaled to [0, 1] and modelled as Bernoulli means; the loss is the negative
ELBO per example (reconstruction cross-entropy summed over 64 pixels + KL to N(0, I)),
in nats. The reparameterisation noise is part of the batch, drawn from (step, seed),
and evaluation uses a fixed noise draw per split, so everything is deterministic.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from ._common import generator, salt, split_indices
from ._supervised import supervised_problem
from .base import Problem
from .classification import SPLIT_SEED

LATENT, HIDDEN = 8, 128


@lru_cache(maxsize=1)
def vae_data() -> dict:
    """{split: (X, X)} with X float32 (n, 64) in [0, 1]; same split as the classifiers."""
    from .classification import _load_digits   # the CSV, without importing sklearn

    x = _load_digits()[0] / 16.0
    parts = split_indices(len(x), SPLIT_SEED)
    out = {}
    for split, idx in zip(("train", "val", "test"), parts):
        t = torch.tensor(x[idx], dtype=torch.float32)
        out[split] = (t, t)
    return out


class VAE(torch.nn.Module):
    """MLP encoder 64 -> HIDDEN -> (mu, log var) in R^LATENT; MLP decoder back to 64 logits."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(),
                                           torch.nn.Linear(HIDDEN, 2 * LATENT))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(LATENT, HIDDEN), torch.nn.ReLU(),
                                           torch.nn.Linear(HIDDEN, 64))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per example, shape (n,), with reparameterisation noise ``eps``."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(1)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).sum(1)
        return recon + kl


def neg_elbo(m: VAE, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return m(x, eps).mean()


def digits_vae_problem() -> Problem:
    key = salt("digits-vae")

    def batch_noise(gen: torch.Generator, n: int) -> tuple:
        return (torch.randn(n, LATENT, generator=gen),)

    @lru_cache(maxsize=3)
    def eval_noise(split: str, n: int) -> tuple:
        return (torch.randn(n, LATENT, generator=generator(key, 2, salt(split))),)

    return supervised_problem(
        "digits-vae", "vae",
        f"VAE on 8x8 digits (pixels in [0, 1], Bernoulli decoder), MLP encoder/decoder "
        f"with {HIDDEN} hidden units, latent dim {LATENT}; loss = negative ELBO per "
        "example in nats (fixed noise for evaluation), mini-batches of 64.",
        vae_data(), VAE, neg_elbo, batch_size=64, default_steps=300,
        batch_extra=batch_noise, eval_extra=eval_noise)


FACTORIES = {"digits-vae": digits_vae_problem}
