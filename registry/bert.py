"""The description embedder's BERT forward, written out.

transformers' ``BertModel`` wraps every layer in output capturing, keyword
handling, mask building and attention dispatch: on a lone short description
that wrapping is about a fifth of the call (``bench/generate.py`` times both
on every request). ``BertEncoder`` runs the same operations on the same weights,
in the same order and the same dtypes, as ``BertModel`` does with SDPA attention
in evaluation mode (under bfloat16 autocast when its linear layers are stored in
bfloat16), with none of the wrapping, and one rearrangement: each layer's query,
key and value products run as one product over their stacked weights (three
calls become one; on a lone description a call costs about as much as its
arithmetic). Every output is still the sum of the same products, which the
matrix library adds in the same order either way: the vectors are the same bits
(``tests/registry/test_embeddings.py`` compares the two in float32 and bfloat16,
and ``bench/generate.py`` on every request it times). It covers what
all-MiniLM-L6-v2 uses: absolute positions, GELU, no cache, no cross-attention;
any other configuration is refused when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class _Layer:
    qkv_weight: torch.Tensor  # (3H, H): the query, key and value weights stacked
    qkv_bias: torch.Tensor  # (3H,)
    attention_out: torch.nn.Linear
    attention_norm: torch.nn.LayerNorm
    intermediate: torch.nn.Linear
    output: torch.nn.Linear
    output_norm: torch.nn.LayerNorm


class BertEncoder:
    """``BertModel(...).last_hidden_state`` for a loaded (eval-mode) BERT: (n, t, H).
    The stacked query, key and value weights are copied when it is built: build it
    after any change to the model's dtype or device."""

    def __init__(self, bert: Any) -> None:
        config = bert.config
        problems = [
            f"{name} is {value!r}"
            for name, value, wanted in (
                ("hidden_act", config.hidden_act, "gelu"),
                (
                    "position type",
                    getattr(config, "position_embedding_type", "absolute"),
                    "absolute",
                ),
                ("is_decoder", config.is_decoder, False),
                ("attention implementation", config._attn_implementation, "sdpa"),
            )
            if value != wanted
        ]
        if problems:
            raise ValueError(f"BertEncoder covers MiniLM's configuration; {', '.join(problems)}")
        emb = bert.embeddings
        self.word, self.position = emb.word_embeddings, emb.position_embeddings
        self.token_type, self.norm = emb.token_type_embeddings, emb.LayerNorm
        self.heads = config.num_attention_heads
        self.head_size = config.hidden_size // self.heads
        self.scaling = self.head_size**-0.5
        self.layers = [
            _Layer(
                *_stacked_qkv(layer),
                attention_out=layer.attention.output.dense,
                attention_norm=layer.attention.output.LayerNorm,
                intermediate=layer.intermediate.dense,
                output=layer.output.dense,
                output_norm=layer.output.LayerNorm,
            )
            for layer in bert.encoder.layer
        ]

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """The last hidden states, float32 (n, t, H). The linear layers' products run in
        their weights' dtype, as autocast runs them when the weights are bfloat16;
        layer norms and residual sums in float32, as autocast keeps them. Call it under
        ``torch.inference_mode()``, as the embedder's pooling loop does once per call."""
        n, t = input_ids.shape
        x = self.word(input_ids) + self.token_type(token_type_ids)
        x = self.norm(x + self.position.weight[:t])
        # SDPA's boolean mask (True: attend), or none when no row is padded, as BertModel
        mask = None if bool(attention_mask.all()) else attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            qkv = F.linear(x.to(layer.qkv_weight.dtype), layer.qkv_weight, layer.qkv_bias)
            q, k, v = qkv.view(n, t, 3, self.heads, self.head_size).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
            attended = attended.transpose(1, 2).reshape(n, t, -1)
            x = layer.attention_norm(layer.attention_out(attended).float() + x)
            hidden = F.gelu(layer.intermediate(x.to(layer.intermediate.weight.dtype)))
            x = layer.output_norm(layer.output(hidden).float() + x)
        out: torch.Tensor = x
        return out


def _stacked_qkv(layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A BERT layer's query, key and value weights (3H, H) and biases (3H,), stacked."""
    linears = (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value)
    return (
        torch.cat([lin.weight.detach() for lin in linears]),
        torch.cat([lin.bias.detach() for lin in linears]),
    )
