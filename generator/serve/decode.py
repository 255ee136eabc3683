"""SG-LoRA's decode for serving: the network's sampling pass rearranged so that a
generated adapter costs a few passes over its own numbers (460,800 for SmolLM2-135M
at r = 8 on q/v) and three products of that width.

``SGLoraNet.sample`` on ``to_tokens`` / ``var_tokens`` and ``from_tokens`` (the
training-time path) is the definition; this module computes the same function
(to float rounding; ``tests/generator/serve/test_decode.py`` compares them) with
three rearrangements that follow from linearity:

- The mean reader is linear and the mixture weights sum to one, so reading the
  normalised mixture mean is the weighted sum of each expert's read mean,
  ``R(tok((sum_k a_k mu_k - M) / S)) = sum_k a_k R(tok((mu_k - M) / S))``: an
  expert's read mean (480 x hidden numbers) is computed once, when the expert is
  first used, instead of a full-width product per request.
- The readers and the writer work on the flattened rows in place (a token is row
  ``i`` of A and column ``i`` of B), the log-variance's shift and scale are
  folded into its reader, and the normaliser's per-block scale into the
  writer's input, so the output ``mu* + S * untok(W h + b)`` is accumulated onto
  the mixture mean by one product per module and block half (over all its
  tokens), with no token copies and no de-normalisation pass.
- Each request is decoded on its own with tensors of one adapter's size, which
  stay in cache, instead of a batch's (N, L, d) stacks, which are fresh
  allocations of tens of megabytes each time. It also makes an adapter's bits
  independent of the batch it was decoded in, which a recipe's rebuild needs.

A network whose writers are exactly zero adds nothing to the mixture mean: an untrained
one, or one whose learned correction did not beat the plain mixture on the validation
experts, which keeps the untrained state (``generator.fit.sg``). Its decode
(``mixture_only``) computes ``mu*`` alone and adds 0.0, as the whole decode would add
the writers' exact zeros, so the bytes are the same without the readers, the network
and the writers (``tests/generator/serve/test_decode.py``).

The mixture's moments (the mean and the log-variance condition over the K experts'
rows) are computed by one compiled pass (``generator.serve.mixing``, decoder version
"3"); version "2" computed them with tensor operations, about 35 passes over the
adapter's numbers, and is kept so that its recipes rebuild bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from generator.hypernet.layout import BlockNormaliser, LoraLayout, Rows
from generator.hypernet.networks import SGLoraNet
from generator.hypernet.tokens import VAR_FLOOR, ModuleShape, module_shapes

# the decoder versions (recipes' rounding) ``SGDecoder`` computes, oldest first; the
# last is the one new adapters are made with (``generator.serve.generator.DECODER``)
VERSIONS = ("2", "3")


@dataclass(frozen=True)
class ExpertTerms:
    """What a decode reads of one expert: its mean and variance (the expert's own
    tensors, not copies) and its read mean (T, hidden)."""

    mean: Rows  # {module: (L, d)}
    var: Rows
    read_mean: torch.Tensor  # (T, h): the mean reader on the expert's normalised mean


@dataclass(frozen=True)
class _Module:
    shape: ModuleShape
    rows: slice  # its span of the flat rows
    tokens: slice  # its span of the T tokens
    inv_var_scale: torch.Tensor  # (L, d): 1 / S^2
    read_a: torch.Tensor  # (fi, h) log-variance reader on A rows (scale folded)
    read_b: torch.Tensor  # (fo, h) and on B columns
    write_a: torch.Tensor  # (h + 1, fi): the writer's A half, its bias as the last row
    write_b: torch.Tensor  # (fo, h + 1): the writer's B half, its bias as the last column
    scale_a: torch.Tensor  # (L, 1, 1) the normaliser's A scale per layer
    scale_b: torch.Tensor  # (L, 1, 1)


def _reader(net: SGLoraNet, kind: str, module: str) -> nn.Linear:
    readers = net.codec.readers[kind]
    assert isinstance(readers, nn.ModuleDict)
    reader = readers[module]
    assert isinstance(reader, nn.Linear)
    return reader


class SGDecoder:
    """SG-LoRA's sampling pass for one checkpoint, one request at a time."""

    def __init__(
        self,
        net: SGLoraNet,
        layout: LoraLayout,
        norm: BlockNormaliser,
        *,
        logvar_shift: float,
        logvar_scale: float,
    ) -> None:
        self.net, self.layout, self.norm = net, layout, norm
        shapes = module_shapes(layout)
        if [s.module for s in shapes] != [s.module for s in net.shapes]:
            raise ValueError("the network's modules are not the layout's")
        codec = net.codec
        self.modules: list[_Module] = []
        row, tok = 0, 0
        positions = []
        writers = []
        with torch.no_grad():
            for i, s in enumerate(shapes):
                d, t = s.layers * s.width * s.rank, s.layers * s.rank
                reader = _reader(net, "logvar", s.module)
                writer = codec.writers[s.module]
                assert isinstance(writer, nn.Linear)
                writers.append(writer)
                w_read = reader.weight / logvar_scale  # (h, w)
                w_write = torch.cat([writer.weight, writer.bias[:, None]], 1)  # (w, h + 1)
                std = norm.std[s.module]  # (L, 2)
                self.modules.append(
                    _Module(
                        shape=s,
                        rows=slice(row, row + d),
                        tokens=slice(tok, tok + t),
                        inv_var_scale=norm.scale(layout, s.module).pow(2).reciprocal(),
                        read_a=w_read[:, : s.fan_in].T.contiguous(),
                        read_b=w_read[:, s.fan_in :].T.contiguous(),
                        write_a=w_write[: s.fan_in].T.contiguous(),
                        write_b=w_write[s.fan_in :].contiguous(),
                        scale_a=std[:, 0].reshape(-1, 1, 1).clone(),
                        scale_b=std[:, 1].reshape(-1, 1, 1).clone(),
                    )
                )
                # the log-variance reader's bias with its input's shift folded in, plus
                # the token positions: what every request's condition starts from
                bias = reader.bias - logvar_shift / logvar_scale * reader.weight.sum(1)
                positions.append((codec.position(i) + bias).reshape(t, -1))
                row, tok = row + d, tok + t
            self.start = torch.cat(positions)  # (T, h)
        self.size = row
        # a network whose writers are exactly zero adds nothing to the mixture mean (an
        # untrained one, or one whose correction training did not keep): its decode is
        # mu* + 0.0, computed without the network (``mixture_mean``, the same bits)
        self.mixture_only = not any(bool(w.weight.any()) or bool(w.bias.any()) for w in writers)

    def rows(self, flat: torch.Tensor) -> Rows:
        """(D,) -> {module: (L, d)} views of ``flat``."""
        return {m.shape.module: flat[m.rows].view(m.shape.layers, -1) for m in self.modules}

    @torch.no_grad()
    def expert_terms(self, mean: Rows, var: Rows) -> ExpertTerms:
        """An expert's rows and read mean (computed once per expert)."""
        parts = []
        for m in self.modules:
            s = m.shape
            normalised = (mean[s.module] - self.norm.mean[s.module]) / self.norm.scale(
                self.layout, s.module
            )
            reader = _reader(self.net, "mean", s.module)
            a, b = self._halves(normalised.reshape(-1), s)
            w = reader.weight
            read = a @ w[:, : s.fan_in].T + b.transpose(1, 2) @ w[:, s.fan_in :].T + reader.bias
            parts.append(read.reshape(-1, read.shape[-1]))
        return ExpertTerms(mean, var, torch.cat(parts))

    @staticmethod
    def _view(flat: torch.Tensor, m: _Module) -> torch.Tensor:
        return flat[m.rows].view(m.shape.layers, -1)

    @staticmethod
    def _halves(flat: torch.Tensor, s: ModuleShape) -> tuple[torch.Tensor, torch.Tensor]:
        """A module's flat rows -> views A (L, r, fi) and B (L, fo, r)."""
        rows = flat.view(s.layers, -1)
        split = s.rank * s.fan_in
        a = rows[:, :split].view(s.layers, s.rank, s.fan_in)
        b = rows[:, split:].view(s.layers, s.fan_out, s.rank)
        return a, b

    def _moments_v2(
        self,
        weights: Sequence[float],
        experts: Sequence[ExpertTerms],
        out: torch.Tensor,
        logvar: torch.Tensor,
    ) -> None:
        """Decoder version 2's mixture, module by module with tensor operations:
        mu* = sum a_k mu_k into ``out``, var* = sum a_k (var_k + (mu_k - mu*)^2) into
        ``logvar``, then log(var* / S^2 + floor) there."""
        for m in self.modules:
            name, mu, total = m.shape.module, self._view(out, m), self._view(logvar, m)
            torch.mul(experts[0].mean[name], weights[0], out=mu)
            for a, e in zip(weights[1:], experts[1:], strict=True):
                mu.add_(e.mean[name], alpha=a)
            torch.mul(experts[0].var[name], weights[0], out=total)
            diff = torch.empty_like(mu)
            for k, (a, e) in enumerate(zip(weights, experts, strict=True)):
                if k:
                    total.add_(e.var[name], alpha=a)
                torch.sub(e.mean[name], mu, out=diff)
                total.addcmul_(diff, diff, value=a)
            total.mul_(m.inv_var_scale).add_(VAR_FLOOR).log_()

    @torch.no_grad()
    def decode(
        self,
        weights: Sequence[float],
        experts: Sequence[ExpertTerms],
        eps: torch.Tensor,
        *,
        version: str = VERSIONS[-1],
    ) -> torch.Tensor:
        """One adapter: mixture ``weights`` (summing to one) over ``experts`` and the
        latent noise ``eps`` (Z,) -> its flat de-normalised rows (D,). ``version`` is
        the decoder version whose rounding to follow (``VERSIONS``): "3" computes the
        mixture's moments in one compiled pass (``generator.serve.mixing``), "2" with
        tensor operations, expert by expert; everything after them is shared."""
        if len(weights) != len(experts) or not experts:
            raise ValueError(f"{len(weights)} weights for {len(experts)} experts")
        if version not in VERSIONS:
            raise ValueError(f"decoder version {version!r} is not one of {VERSIONS}")
        net = self.net
        out = torch.empty(self.size)
        if self.mixture_only and version == "3":
            from generator.serve.mixing import mixture_mean

            for m in self.modules:
                name = m.shape.module
                mixture_mean(weights, [e.mean[name] for e in experts], out[m.rows])
            return out
        # the log-variance condition log(var* / S^2 + floor), made in place
        logvar = torch.empty(self.size)
        if version == "3":
            from generator.serve.mixing import mixture_moments

            for m in self.modules:
                name = m.shape.module
                mixture_moments(
                    weights,
                    [e.mean[name] for e in experts],
                    [e.var[name] for e in experts],
                    m.inv_var_scale,
                    VAR_FLOOR,
                    out[m.rows],
                    logvar[m.rows],
                )
            logvar.log_()
        else:
            self._moments_v2(weights, experts, out, logvar)
        cond = self.start.clone()
        for a, e in zip(weights, experts, strict=True):
            cond.add_(e.read_mean, alpha=a)
        for m in self.modules:
            s = m.shape
            a_rows, b_rows = self._halves(logvar[m.rows], s)
            part = cond[m.tokens].view(s.layers, s.rank, -1)
            part.add_(a_rows @ m.read_a).add_(b_rows.transpose(1, 2) @ m.read_b)
        cond = cond + net.cond(cond)  # (T, h)
        mu, logvar = net.prior_head(cond.mean(0)).chunk(2, dim=-1)
        z = mu + eps * (0.5 * logvar.clamp(-8, 4)).exp()
        y = cond + net.z_in(z)
        y = y + net.dec(y)  # (T, h)
        ones = torch.ones(y.shape[0], 1)
        y = torch.cat([y, ones], 1)  # (T, h + 1): the writer's bias as one more input
        for m in self.modules:
            s = m.shape
            h = y[m.tokens].view(s.layers, s.rank, -1)  # (L, r, h + 1)
            a_out, b_out = self._halves(out[m.rows], s)
            # one product per half over every token of the module, added onto mu*
            a_new = (h * m.scale_a).view(s.layers * s.rank, -1) @ m.write_a  # (L r, fi)
            a_out.add_(a_new.view(s.layers, s.rank, s.fan_in))
            b_new = m.write_b @ (h * m.scale_b).view(s.layers * s.rank, -1).T  # (fo, L r)
            b_out.add_(b_new.view(s.fan_out, s.layers, s.rank).transpose(0, 1))
        return out
