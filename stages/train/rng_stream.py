"""A private torch random stream, so a model's random draws do not depend on what else runs."""

from __future__ import annotations

import torch


class RngStream:
    """A private torch random stream (CPU, and the CUDA device if used), entered with `with`."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        outer = self._get()
        torch.manual_seed(seed)
        self.state = self._get()
        self._set(outer)
        self._outer: tuple | None = None

    def _get(self) -> tuple:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set(self, state: tuple) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def __enter__(self) -> "RngStream":
        self._outer = self._get()
        self._set(self.state)
        return self

    def __exit__(self, *exc: object) -> None:
        self.state = self._get()
        assert self._outer is not None
        self._set(self._outer)
        self._outer = None
