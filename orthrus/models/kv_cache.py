"""The one K/V cache the project's engines use, for one row and for a batch alike.

Per layer it holds keys and values ``[B, Hkv, capacity, D]``. Rows are left-aligned: row r's
committed prefix occupies slots ``[0, lengths[r])`` of every layer, where the lengths are kept by
the caller (an engine knows what it committed) and handed to every forward pass as ``starts``. A
pass over a block of T tokens writes row r's K/V at slots ``[starts[r], starts[r] + T)``; slots at
or past a row's committed length hold stale K/V (rejected drafts, a draft block) that no query sees,
so dropping rejected drafts needs no crop: the caller does not advance the row's length past them,
and the next pass overwrites them.

The cache is the project's own (plain tensors), so nothing here depends on the internals of
transformers' cache classes, which differ between the transformers releases the project supports.
A cache made without a capacity grows to fit each write (the engines' ``cache: dynamic``): its
storage is then exactly the slots written so far, as a concatenating cache's would be.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, ``[B, Hkv, capacity, D]``, preallocated or growing (see the module)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], growable: bool = False) -> None:
        self.keys, self.values = keys, values
        self.growable = growable

    @classmethod
    def empty(
        cls,
        layers: int,
        batch_size: int,
        kv_heads: int,
        head_dim: int,
        capacity: int | None,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> KVCache:
        """Zeros of ``capacity`` slots per row; ``capacity=None``: no slots yet, growing on demand."""
        shape = (batch_size, kv_heads, capacity or 0, head_dim)

        def zeros() -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls([zeros() for _ in range(layers)], [zeros() for _ in range(layers)], growable=capacity is None)

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def reserve(self, end: int) -> None:
        """Make room for slots ``[0, end)``: a growing cache grows to exactly ``end``; a preallocated one
        that is too small is a programming error (engines size it for prompt + budget)."""
        if end <= self.capacity:
            return
        if not self.growable:
            raise ValueError(f"the K/V cache holds {self.capacity} slots per row; a pass needs {end}.")
        grow = end - self.capacity
        for store in (self.keys, self.values):
            for i, tensor in enumerate(store):
                pad = tensor.new_zeros((*tensor.shape[:2], grow, tensor.shape[3]))
                store[i] = torch.cat([tensor, pad], dim=2)

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's block at the same slots ``[start, start + T)``; returns the keys and values of
        slots ``[0, start + T)`` (views, no copy)."""
        end = start + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def scatter(
        self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, span: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row r's block at its own slots: ``k``/``v`` [B, Hkv, T, D] go to slots ``slots`` [B, T];
        returns the keys and values of slots ``[0, span)`` (views). Written by indexing the B x T
        slots, which touches only them: ``scatter_`` on the CPU copied the whole layer, a cost that
        grew with the context at every step of a ragged batch."""
        rows = torch.arange(slots.shape[0], device=slots.device).unsqueeze(1).expand_as(slots)
        self.keys[layer][rows, :, slots] = k.transpose(1, 2)  # [B, T, Hkv, D] into slots (rows, slots)
        self.values[layer][rows, :, slots] = v.transpose(1, 2)
        return self.keys[layer][:, :, :span], self.values[layer][:, :, :span]

    def prefix(self, layer: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots ``[0, length)`` of one layer (views)."""
        return self.keys[layer][:, :, :length], self.values[layer][:, :, :length]

    def storage_bytes(self) -> int:
        """Bytes of memory the K/V tensors hold (their whole storage, not just the committed slots)."""
        return sum(t.untyped_storage().nbytes() for t in (*self.keys, *self.values))
