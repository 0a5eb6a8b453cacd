"""QAViT's global token bank and the branch that cross-attends to it.

The bank is ``S`` key tokens and ``S`` value tokens of width ``dim`` that every attention branch
reads as extra keys/values and that three branches per block write to. A write pools the branch's
tokens into the ``S`` slots: a gate ``Linear(dim -> S)`` on the normalised tokens, softmax over the
tokens (each slot gets a distribution over tokens), pools a compressed copy ``Linear(dim -> dim)``
into the key slots and the normalised tokens themselves into the value slots. This "MLA gateway" of
the seed is just that: norm + linear compression + token-softmax gate.

Two modes:

* functional (default): the bank is a per-sample *state* ``(B, S, dim)``, initialised
  from the learned tokens at the start of every forward and carried through the blocks. A write is a
  gated convex update ``state <- (1 - g) * state + g * LN(pooled)`` with a learned gate ``g`` per slot
  (``sigmoid``, initialised at ``write_rate``). Everything is differentiable, nothing is mutated,
  one image's bank depends on that image only, training and evaluation behave alike, and every bank
  token's norm stays below :meth:`TokenBank.state_norm_bound`: a convex combination of the learned
  tokens and LayerNorm outputs, whatever the number of writes or steps.
* faithful (the seed, for comparison only): the bank tokens are parameters whose storage is
  overwritten during the training forward with ``+ write_rate * clamp(batch-mean update, +-update_clamp)``,
  outside autograd (so the gateway never gets a gradient: it is frozen here, and counted). Its outputs
  depend on the rest of the batch and on every earlier step, and its norm grows without bound
 . Under DDP the update is averaged over ranks, so ranks keep the same bank.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from timm.layers import trunc_normal_
from torch import nn

from vitlab.layers.branch_attention import branch_attend
from vitlab.layers.dropout import Dropout


class BankState(NamedTuple):
    """The bank as the blocks see it: keys and values ``(B, S, dim)``."""

    keys: torch.Tensor
    values: torch.Tensor


class TokenBank(nn.Module):
    """The learned bank tokens, the write gateway, and the read/write rules (module docstring)."""

    def __init__(
        self,
        dim: int,
        num_tokens: int = 16,
        faithful: bool = False,
        write_rate: float = 0.1,
        update_clamp: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 < write_rate < 1.0:
            raise ValueError(f"bank_write_rate must be in (0, 1), got {write_rate}")
        self.dim, self.num_tokens, self.faithful = dim, num_tokens, faithful
        self.write_rate, self.update_clamp = write_rate, update_clamp
        self.keys = nn.Parameter(torch.empty(1, num_tokens, dim))
        self.values = nn.Parameter(torch.empty(1, num_tokens, dim))
        self.gateway_norm = nn.LayerNorm(dim)
        self.gateway_compress = nn.Linear(dim, dim)
        self.gateway_gate = nn.Linear(dim, num_tokens)
        if faithful:
            self.update_norm_k = self.update_norm_v = self.write_gate = None
            for module in (self.gateway_norm, self.gateway_compress, self.gateway_gate):
                module.requires_grad_(False)
        else:
            self.update_norm_k = nn.LayerNorm(dim)
            self.update_norm_v = nn.LayerNorm(dim)
            self.write_gate = nn.Parameter(torch.full((num_tokens,), math.log(write_rate / (1 - write_rate))))
        trunc_normal_(self.keys, std=0.02)
        trunc_normal_(self.values, std=0.02)

    def initial_state(self, batch_size: int) -> BankState:
        # Copies, not expanded views: a view of a parameter made under no_grad requires grad without
        # a grad_fn, which breaks module hooks such as torch's flop counter.
        return BankState(self.keys.repeat(batch_size, 1, 1), self.values.repeat(batch_size, 1, 1))

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``(B, N, dim)`` -> per-sample slot updates for keys and values, each ``(B, S, dim)``."""
        normed = self.gateway_norm(tokens)
        gate = self.gateway_gate(normed).softmax(dim=1)  # (B, N, S): each slot's distribution over tokens
        pooled = gate.transpose(1, 2) @ normed
        # Pooling the compressed tokens is compressing the pooled ones (the Linear commutes with a
        # weighted mean whose weights sum to 1, bias included): S rows to project instead of N.
        return self.gateway_compress(pooled), pooled

    def write(self, state: BankState, tokens: torch.Tensor) -> BankState:
        """The bank after writing ``tokens`` (a branch's normalised output) into ``state``."""
        if self.faithful:
            return self._write_in_place(state, tokens)
        update_k, update_v = self.pool(tokens)
        g = torch.sigmoid(self.write_gate)[:, None].to(state.keys.dtype)  # (S, 1)
        keys = torch.lerp(state.keys, self.update_norm_k(update_k).to(state.keys.dtype), g)
        values = torch.lerp(state.values, self.update_norm_v(update_v).to(state.values.dtype), g)
        return BankState(keys, values)

    def _write_in_place(self, state: BankState, tokens: torch.Tensor) -> BankState:
        if not self.training:
            return state  # the seed never writes in eval mode
        with torch.no_grad():
            update_k, update_v = self.pool(tokens.detach())
            update = torch.stack((update_k.float().mean(0), update_v.float().mean(0)))
            update = update.clamp(-self.update_clamp, self.update_clamp)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(update)
                update /= dist.get_world_size()
            # In place through `.data`, outside autograd, as the seed's assignment did.
            self.keys.data.add_(self.write_rate * update[0].to(self.keys.dtype))
            self.values.data.add_(self.write_rate * update[1].to(self.values.dtype))
        return self.initial_state(tokens.shape[0])

    def state_norm_bound(self) -> float:
        """Functional mode: an upper bound on the L2 norm of any bank token after any number of
        writes: the larger of the learned tokens' norms and the update LayerNorms' largest output norm
        (``max|gain| * sqrt(dim) + |bias|``)."""
        if self.faithful:
            raise ValueError("the faithful bank has no norm bound")
        with torch.no_grad():
            learned = torch.cat((self.keys, self.values), dim=1).norm(dim=-1).max().item()
            written = max(
                n.weight.abs().max().item() * math.sqrt(self.dim) + n.bias.norm().item()
                for n in (self.update_norm_k, self.update_norm_v)
            )
        return max(learned, written)


class BankCrossAttention(nn.Module):
    """QAViT's fourth branch: the tokens' queries attend to the bank only (projected keys/values)."""

    def __init__(
        self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0, use_flash: bool = False
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)
        self.attn_drop = attn_drop
        self.use_flash = use_flash

    def forward(
        self, x: torch.Tensor, bank_k: torch.Tensor, bank_v: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` ``(B, N, dim)``, bank ``(B, S, dim)`` -> ``(B, N, dim)`` and, if asked, the weights
        ``(B, heads, N, S)``."""
        B, N, C = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(bank_k)), heads(self.v(bank_v))
        dropout_p = self.attn_drop if self.training else 0.0
        out, probs = branch_attend(q, k, v, dropout_p=dropout_p, need_weights=need_weights, use_flash=self.use_flash)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C))), probs
