"""The generators' networks: conditional VAEs over LoRA *rank-one tokens*.

A LoRA block (layer l, module m) of rank r is a sum of r rank-one terms
``b_i a_i^T``; token (l, m, i) is ``[a_i ; b_i]`` (fan_in + fan_out numbers).
SmolLM2-135M at r = 8 on q_proj/v_proj is 30 x 2 x 8 = 480 tokens of 1,152
(q) or 768 (v) numbers. Every network here reads and writes tokens with one
linear map per module type, shared across layers and rank indices, plus
layer, module and rank-index embeddings: the parameter count grows with the
token width, not with the 460,800-number flat vector. Rank indices are
meaningful because every zoo adapter of a layout starts from the same A.

One global latent z per adapter (the task), pooled from all tokens.

- ``SGLoraNet``: condition = the SG-LoRA mixture (mu*, sigma*^2) as tokens,
  learned prior p(z | c), output = mu* + decoded correction (the correction's
  last layer starts at zero, so an untrained net returns the mixture mean).
- ``ICMLoraNet``: condition = a vector (description embedding, optionally the
  base model's in-context task vector), prior N(0, I).

Pure torch: tensors in, tensors out, no registry and no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from generator.hypernet.tokens import ModuleShape, Tokens


def kl_normal(
    mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) summed over dims: (N, Z) -> (N,)."""
    return 0.5 * (
        logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1
    ).sum(-1)


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out)
    )


class TokenCodec(nn.Module):
    """Per-module linear readers/writers and the token position embeddings."""

    def __init__(self, shapes: list[ModuleShape], hidden: int, readers: tuple[str, ...]) -> None:
        super().__init__()
        self.shapes = shapes
        self.readers = nn.ModuleDict(
            {
                name: nn.ModuleDict({s.module: nn.Linear(s.width, hidden) for s in shapes})
                for name in readers
            }
        )
        self.writers = nn.ModuleDict({s.module: nn.Linear(hidden, s.width) for s in shapes})
        for w in self.writers.values():  # start every correction / output at zero
            assert isinstance(w, nn.Linear)
            nn.init.zeros_(w.weight)
            nn.init.zeros_(w.bias)
        layers = max(s.layers for s in shapes)
        rank = max(s.rank for s in shapes)
        self.layer_emb = nn.Embedding(layers, hidden)
        self.module_emb = nn.Embedding(len(shapes), hidden)
        self.rank_emb = nn.Embedding(rank, hidden)
        for e in (self.layer_emb, self.module_emb, self.rank_emb):
            nn.init.normal_(e.weight, std=0.02)

    def position(self, index: int) -> torch.Tensor:
        """(L, r, hidden) embedding of every token position of module ``index``."""
        s = self.shapes[index]
        dev = self.layer_emb.weight.device
        lay = self.layer_emb(torch.arange(s.layers, device=dev))[:, None, :]  # (L, 1, h)
        rnk = self.rank_emb(torch.arange(s.rank, device=dev))[None, :, :]  # (1, r, h)
        mod = self.module_emb.weight[index][None, None, :]  # (1, 1, h)
        return lay + rnk + mod

    def read(self, reader: str, module: str, tokens: torch.Tensor) -> torch.Tensor:
        readers = self.readers[reader]
        assert isinstance(readers, nn.ModuleDict)
        return readers[module](tokens)  # type: ignore[no-any-return]  # (N, L, r, w) -> (N, L, r, h)

    def write(self, module: str, hidden: torch.Tensor) -> torch.Tensor:
        return self.writers[module](hidden)  # (N, L, r, h) -> (N, L, r, w)


def _pool(per_module: list[torch.Tensor]) -> torch.Tensor:
    """Mean over every token of every module: [(N, L, r, h)] -> (N, h)."""
    total = sum(t.sum(dim=(1, 2)) for t in per_module)
    count = sum(t.shape[1] * t.shape[2] for t in per_module)
    assert isinstance(total, torch.Tensor)
    return total / count


@dataclass(frozen=True)
class NetConfig:
    hidden: int = 128
    latent: int = 32


class SGLoraNet(nn.Module):
    """CVAE with a learned conditional prior p(z | mu*, sigma*^2) (SG-LoRA)."""

    def __init__(self, shapes: list[ModuleShape], config: NetConfig) -> None:
        super().__init__()
        h, z = config.hidden, config.latent
        self.shapes, self.config = shapes, config
        self.codec = TokenCodec(shapes, h, readers=("mean", "logvar", "target"))
        self.cond = _mlp(h, h, h)
        self.enc = _mlp(h, h, h)
        self.enc_head = nn.Linear(2 * h, 2 * z)
        self.prior_head = nn.Linear(h, 2 * z)
        self.z_in = nn.Linear(z, h)
        self.dec = _mlp(h, h, h)

    def condition(self, mean: Tokens, logvar: Tokens) -> list[torch.Tensor]:
        """Per-module condition features: [(N, L, r, h)]."""
        out = []
        for i, s in enumerate(self.shapes):
            x = (
                self.codec.read("mean", s.module, mean[s.module])
                + self.codec.read("logvar", s.module, logvar[s.module])
                + self.codec.position(i)
            )  # (N, L, r, h)
            out.append(x + self.cond(x))
        return out

    def prior(self, cond: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.prior_head(_pool(cond)).chunk(2, dim=-1)  # (N, Z) each
        return mu, logvar.clamp(-8, 4)

    def posterior(
        self, target: Tokens, mean: Tokens, cond: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats = []
        for i, s in enumerate(self.shapes):
            x = self.codec.read("target", s.module, target[s.module] - mean[s.module]) + cond[i]
            feats.append(x + self.enc(x))  # (N, L, r, h)
        mu, logvar = self.enc_head(torch.cat([_pool(feats), _pool(cond)], -1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-8, 4)

    def decode(self, z: torch.Tensor, mean: Tokens, cond: list[torch.Tensor]) -> Tokens:
        """z (N, Z) -> tokens {module: (N, L, r, w)} = mu* + correction."""
        zh = self.z_in(z)[:, None, None, :]  # (N, 1, 1, h)
        out = {}
        for i, s in enumerate(self.shapes):
            x = cond[i] + zh
            out[s.module] = mean[s.module] + self.codec.write(s.module, x + self.dec(x))
        return out

    def forward(self, target: Tokens, mean: Tokens, logvar: Tokens) -> tuple[Tokens, torch.Tensor]:
        """Training pass: reconstruction and per-sample KL(q || p) (N,)."""
        cond = self.condition(mean, logvar)
        mu_p, lv_p = self.prior(cond)
        mu_q, lv_q = self.posterior(target, mean, cond)
        z = mu_q + torch.randn_like(mu_q) * (0.5 * lv_q).exp()
        return self.decode(z, mean, cond), kl_normal(mu_q, lv_q, mu_p, lv_p)

    def sample(self, mean: Tokens, logvar: Tokens, eps: torch.Tensor | None = None) -> Tokens:
        """Inference: z = mu_p + eps * sigma_p ~ p(z | c); eps (N, Z), None = the prior mean."""
        cond = self.condition(mean, logvar)
        mu_p, lv_p = self.prior(cond)
        z = mu_p if eps is None else mu_p + eps * (0.5 * lv_p).exp()
        return self.decode(z, mean, cond)


class ICMLoraNet(nn.Module):
    """CVAE with prior N(0, I) conditioned on a task vector (ICM-LoRA)."""

    def __init__(self, shapes: list[ModuleShape], cond_dim: int, config: NetConfig) -> None:
        super().__init__()
        h, z = config.hidden, config.latent
        self.shapes, self.config, self.cond_dim = shapes, config, cond_dim
        self.codec = TokenCodec(shapes, h, readers=("target",))
        self.cond = _mlp(cond_dim, h, h)
        self.enc = _mlp(h, h, h)
        self.enc_head = nn.Linear(2 * h, 2 * z)
        self.z_in = nn.Linear(z, h)
        self.c_in = nn.Linear(h, h)
        self.dec = _mlp(h, h, h)

    def posterior(self, target: Tokens, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = []
        for i, s in enumerate(self.shapes):
            x = self.codec.read("target", s.module, target[s.module]) + self.codec.position(i)
            feats.append(x + self.enc(x))  # (N, L, r, h)
        mu, logvar = self.enc_head(torch.cat([_pool(feats), c], -1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-8, 4)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> Tokens:
        """z (N, Z), c (N, h) -> tokens {module: (N, L, r, w)}."""
        zc = (self.z_in(z) + self.c_in(c))[:, None, None, :]  # (N, 1, 1, h)
        out = {}
        for i, s in enumerate(self.shapes):
            x = self.codec.position(i) + zc
            out[s.module] = self.codec.write(s.module, x + self.dec(x))
        return out

    def forward(self, target: Tokens, condition: torch.Tensor) -> tuple[Tokens, torch.Tensor]:
        """condition (N, cond_dim) -> reconstruction and KL(q || N(0, I)) (N,)."""
        c = self.cond(condition)  # (N, h)
        mu_q, lv_q = self.posterior(target, c)
        z = mu_q + torch.randn_like(mu_q) * (0.5 * lv_q).exp()
        zeros = torch.zeros_like(mu_q)
        return self.decode(z, c), kl_normal(mu_q, lv_q, zeros, zeros)

    def sample(self, condition: torch.Tensor, eps: torch.Tensor | None = None) -> Tokens:
        """Inference: z = eps ~ N(0, I); eps (N, Z), None = the prior mean 0."""
        c = self.cond(condition)  # (N, h)
        z = torch.zeros((c.shape[0], self.config.latent), device=c.device) if eps is None else eps
        return self.decode(z, c)


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def icm_condition(
    description: torch.Tensor, task_vector: torch.Tensor | None, hidden_size: int
) -> torch.Tensor:
    """(D,) description embedding (+ (H,) task vector) -> (D + H + 1,) condition."""
    d = torch.nn.functional.normalize(description.float(), dim=-1)
    if task_vector is None:
        return torch.cat([d, torch.zeros(hidden_size), torch.zeros(1)])
    tv = torch.nn.functional.normalize(task_vector.float(), dim=-1)
    return torch.cat([d, tv, torch.ones(1)])
