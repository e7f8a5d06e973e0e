"""One configuration for the three adapter methods (LoRA, vanilla MoE-LoRA, OMoE)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

METHODS = ("lora", "moe", "omoe")
ORTHOGONALIZE_MODES = ("stiefel", "orthogonal", "norm_preserving")
# B = 0 makes LoRA and MoE-LoRA start as the base model; OMoE needs directions (OMOE_SPEC §4)
DEFAULT_B_INIT_STD = {"lora": 0.0, "moe": 0.0, "omoe": 0.02}


@dataclass
class AdapterConfig:
    """What to attach, where, and how it routes and orthogonalizes.

    method:         ``"lora"`` (one expert, no router), ``"moe"`` (vanilla MoE-LoRA) or ``"omoe"``
                    (Gram–Schmidt over the active experts' outputs, OMOE_SPEC §2–3).
    num_experts:    experts per adapted linear (ignored for ``lora``, which has exactly one).
    experts_pattern: optional expert counts per group of adapted blocks, low to high, e.g.
                    ``[2, 4, 6, 8]`` splits the adapted blocks into four equal groups (MoLA style);
                    a list as long as the number of adapted blocks gives one count per block.
    rank, alpha:    every expert is a rank-``rank`` LoRA with scaling ``alpha / rank``.
    target_modules: exact module names or name suffixes (a list), one regex (a string, full match),
                    or ``"all-linear"`` (every linear except the output head).
    layers:         restrict to these transformer block indices (``None`` = all).
    top_k, top_p:   sparse routing (at most one of them); neither = soft routing.
    orthogonalize:  OMoE mode: ``"stiefel"`` (unit, orthonormal columns), ``"orthogonal"``
                    (unnormalized residuals) or ``"norm_preserving"`` (each expert keeps ``‖e_k‖``).
    redundancy_tol: an expert whose output lies within this relative distance of the span of the
                    earlier active experts is redundant and contributes nothing (guards 0/0). OMoE
                    refuses a value below what its Gram resolves (``orthogonal.resolvable_tol``):
                    1.49e-6 with the default float64 Gram, 3.45e-2 with a float32 one (MPS).
    load_balance_coef, router_z_coef: router auxiliary losses; ``None`` = 0.01 and 0.001 under
                    sparse routing, 0 under soft routing.
    router_init_std: std of the router's normal init (0 = uniform gates at start).
    b_init_std:     std of the normal init of ``lora_B``. ``None``: 0 for LoRA and MoE-LoRA (the
                    adapter starts at zero), 0.02 for OMoE (Gram–Schmidt needs directions; its zero
                    start comes from ``magnitude = 0``, OMOE_SPEC §4). A positive value for ``moe``
                    starts vanilla experts from OMoE's random B: the control for "is diversity
                    just the random start?" (docs/results.md).
    """

    method: str = "omoe"
    num_experts: int = 4
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: list[int] | None = None
    experts_pattern: list[int] | None = None
    top_k: int | None = None
    top_p: float | None = None
    orthogonalize: str | None = "stiefel"
    redundancy_tol: float = 1e-4
    load_balance_coef: float | None = None
    router_z_coef: float | None = None
    router_init_std: float = 0.02
    b_init_std: float | None = None
    seed: int | None = 0

    def __post_init__(self):
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]  # accepts range(...); stays JSON-friendly
        if self.experts_pattern is not None:
            self.experts_pattern = [int(n) for n in self.experts_pattern]
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: choose one of {list(METHODS)}")
        if self.method == "lora":
            self.num_experts, self.top_k, self.top_p, self.experts_pattern = 1, None, None, None
        if self.method != "omoe":
            self.orthogonalize = None
        elif self.orthogonalize not in ORTHOGONALIZE_MODES:
            raise ValueError(
                f"unknown orthogonalize mode {self.orthogonalize!r} for method='omoe': choose one of "
                f"{list(ORTHOGONALIZE_MODES)} (no orthogonalization is method='moe')"
            )
        counts = self.experts_pattern or [self.num_experts]
        if any(int(n) < 1 for n in counts):
            raise ValueError(f"num_experts must be >= 1, got {counts}")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.top_k is not None and self.top_p is not None:
            raise ValueError("set top_k or top_p, not both")
        if self.top_k is not None and not 1 <= self.top_k <= min(counts):
            raise ValueError(f"top_k={self.top_k} must be between 1 and the number of experts ({min(counts)})")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 < self.redundancy_tol < 1.0:
            raise ValueError(f"redundancy_tol must be in (0, 1), got {self.redundancy_tol}")
        if self.b_init_std is None:
            self.b_init_std = DEFAULT_B_INIT_STD[self.method]
        if self.b_init_std < 0 or (self.method == "omoe" and self.b_init_std == 0):
            raise ValueError(f"b_init_std must be >= 0, and > 0 for method='omoe' (Gram–Schmidt needs non-zero "
                             f"expert outputs); got {self.b_init_std}")
        sparse = self.sparse
        if self.load_balance_coef is None:
            self.load_balance_coef = 0.01 if sparse else 0.0
        if self.router_z_coef is None:
            self.router_z_coef = 0.001 if sparse else 0.0

    @property
    def sparse(self) -> bool:
        return self.top_k is not None or self.top_p is not None

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        data = dict(data)
        if "omoe_b_init_std" in data:  # saved before b_init_std covered every method
            data["b_init_std"] = data.pop("omoe_b_init_std")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdapterConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)
