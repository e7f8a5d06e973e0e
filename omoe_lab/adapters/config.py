"""One configuration for every adapter method: LoRA, vanilla MoE-LoRA, OMoE, rank-wise experts
(SMoRA), and the variants (MixLoRA's FFN experts, a shared expert, null experts, an orthogonality
penalty)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

METHODS = ("lora", "moe", "omoe", "mixlora", "omoe_mixlora", "smora")
ORTHOGONALIZE_MODES = ("stiefel", "orthogonal", "norm_preserving")
# methods whose experts sit on whole gated MLP blocks (adapters/ffn.py), not on single linears
FFN_METHODS = ("mixlora", "omoe_mixlora")
# methods that orthogonalize (Gram–Schmidt) the active experts' outputs
ORTHOGONAL_METHODS = ("omoe", "omoe_mixlora")
# B = 0 makes LoRA, MoE-LoRA and MixLoRA start as the base model; the orthogonalizing methods need
# directions and start at zero through their magnitude instead (OMOE_SPEC §4)
DEFAULT_B_INIT_STD = {"lora": 0.0, "moe": 0.0, "omoe": 0.02, "mixlora": 0.0, "omoe_mixlora": 0.02, "smora": 0.0}
# methods whose every expert is one rank-1 component of a single LoRA (SMoRA, adapters/smora.py)
RANK_ONE_METHODS = ("smora",)
# where the adapters go when target_modules is not given
DEFAULT_TARGETS = {
    "lora": ["q_proj", "v_proj"], "moe": ["q_proj", "v_proj"], "omoe": ["q_proj", "v_proj"],
    "mixlora": ["gate_proj", "up_proj", "down_proj"], "omoe_mixlora": ["gate_proj", "up_proj", "down_proj"],
    "smora": ["q_proj", "v_proj"],
}
# the variant options: left out of to_dict() at these defaults, so configs (and the run fingerprints
# hashed from them) of runs made before the variants existed stay what they were
VARIANT_DEFAULTS = {"shared_expert": False, "null_experts": 0, "orthogonality_penalty": 0.0}


@dataclass
class AdapterConfig:
    """What to attach, where, and how it routes and orthogonalizes.

    method:         ``"lora"`` (one expert, no router), ``"moe"`` (vanilla MoE-LoRA), ``"omoe"``
                    (Gram–Schmidt over the active experts' outputs, OMOE_SPEC §2–3), ``"mixlora"``
                    (MixLoRA: one router per gated MLP block, expert i = the frozen FFN with its own
                    LoRA on gate/up/down, adapters/ffn.py) or ``"omoe_mixlora"`` (MixLoRA whose
                    selected experts' *changes* of the FFN output are orthogonalized) or ``"smora"``
                    (SMoRA: every rank-1 component of one LoRA is an expert, routed per token,
                    adapters/smora.py; needs ``rank=1``, and ``num_experts`` is the LoRA's total rank).
    num_experts:    experts per adapted linear, or per MLP block for the FFN methods (ignored for
                    ``lora``, which has exactly one); a shared expert and null experts come on top.
    experts_pattern: optional expert counts per group of adapted blocks, low to high, e.g.
                    ``[2, 4, 6, 8]`` splits the adapted blocks into four equal groups (MoLA style);
                    a list as long as the number of adapted blocks gives one count per block.
    rank, alpha:    every expert is a rank-``rank`` LoRA with scaling ``alpha / rank`` (``smora``: rank 1,
                    so the scaling is ``alpha``).
    target_modules: exact module names or name suffixes (a list), one regex (a string, full match),
                    or ``"all-linear"`` (every linear except the output head). ``None``: the
                    method's default, ``["q_proj", "v_proj"]``, or for the FFN methods
                    ``["gate_proj", "up_proj", "down_proj"]``. For the FFN methods the selected
                    projections of a gated MLP (gate_proj, up_proj, down_proj) are the ones each
                    FFN expert adapts, and every other selected linear (e.g. q/k/v/o_proj) gets a
                    plain LoRA of the same rank, as in the MixLoRA paper (all seven projections).
    layers:         restrict to these transformer block indices
                    (``None`` = all).
    top_k, top_p:   sparse routing (at most one of them); neither = soft routing. The FFN methods
                    take top_k or soft routing (top_p would make the number of expert evaluations
                    per token data-dependent). With null experts, top_k counts real + null slots.
    orthogonalize:  mode of ``omoe`` / ``omoe_mixlora``: ``"stiefel"`` (unit, orthonormal columns),
                    ``"orthogonal"`` (unnormalized residuals) or ``"norm_preserving"`` (each expert
                    keeps ``‖e_k‖``). Forced to ``None`` for the other methods.
    shared_expert:  ``moe`` / ``omoe`` only: one more LoRA expert of the same rank that every token
                    uses with weight 1, beside the routed ones (DeepSeekMoE). In OMoE it comes first
                    in the Gram–Schmidt order: the routed experts are orthogonalized against it.
    null_experts:   N > 0 adds N null experts (AdaMoE) to the router: top-k runs over the E real
                    and N null slots, a null slot outputs nothing, so a token may use fewer than k
                    real experts (``mean_real_experts`` on a layer). The real experts' gates are
                    renormalized among the selected real ones (AdaMoE's code). Needs ``top_k``
                    (or ``top_p`` for ``moe`` / ``omoe``); refused under soft routing.
    orthogonality_penalty: λ ≥ 0, ``moe`` only: adds ``λ · mean_t mean_{i≠j active} cos²(e_i, e_j)``
                    over each token's active experts (cosines from the rank-space Gram) to the
                    auxiliary loss ``omoe_lab.router_aux_loss`` returns, so training minimizes it.
    redundancy_tol: an expert whose output lies within this relative distance of the span of the
                    earlier active experts is redundant and contributes nothing (guards 0/0). OMoE
                    refuses a value below what its Gram resolves (``orthogonal.resolvable_tol``):
                    1.49e-6 with the default float64 Gram, 3.45e-2 with a float32 one (MPS).
    load_balance_coef, router_z_coef: router auxiliary losses; ``None`` = 0.01 and 0.001 under
                    sparse routing, 0 under soft routing.
    router_init_std: std of the router's normal init
                    (0 = uniform gates at start).
    b_init_std:     std of the normal init of ``lora_B``. ``None``: 0 for LoRA, MoE-LoRA and MixLoRA
                    (the adapter starts at zero), 0.02 for OMoE and omoe_mixlora (Gram–Schmidt needs
                    directions; their zero start comes from ``magnitude = 0``, OMOE_SPEC §4). The
                    plain LoRAs the FFN methods put on non-MLP linears always start at B = 0. A
                    positive value for ``moe`` starts vanilla experts from OMoE's random B: the
                    control for "is diversity just the random start?" (docs/results.md).
    """

    method: str = "omoe"
    num_experts: int = 4
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
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
    shared_expert: bool = False
    null_experts: int = 0
    orthogonality_penalty: float = 0.0

    def __post_init__(self):
        if self.method not in METHODS:
            linear = [m for m in METHODS if m not in FFN_METHODS]
            raise ValueError(f"unknown method {self.method!r}: choose one of {linear} (experts on single linears) "
                             f"or {list(FFN_METHODS)} (experts on whole gated MLP blocks)")
        if self.target_modules is None:
            self.target_modules = list(DEFAULT_TARGETS[self.method])
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]  # accepts range(...); stays JSON-friendly
        if self.experts_pattern is not None:
            self.experts_pattern = [int(n) for n in self.experts_pattern]
        self._check_variants()
        if self.method == "lora":
            self.num_experts, self.top_k, self.top_p, self.experts_pattern = 1, None, None, None
        if self.method not in ORTHOGONAL_METHODS:
            self.orthogonalize = None
        elif self.orthogonalize not in ORTHOGONALIZE_MODES:
            vanilla = "moe" if self.method == "omoe" else "mixlora"
            raise ValueError(
                f"unknown orthogonalize mode {self.orthogonalize!r} for method={self.method!r}: choose one of "
                f"{list(ORTHOGONALIZE_MODES)} (no orthogonalization is method={vanilla!r})"
            )
        if self.method in RANK_ONE_METHODS and self.rank != 1:
            raise ValueError(
                f"method={self.method!r} makes every rank-1 component of one LoRA an expert, so its experts have rank 1; "
                f"got rank={self.rank}. Pass rank=1 and num_experts = the LoRA's total rank (e.g. num_experts=16, "
                "rank=1, top_k=4); the scaling is then alpha / 1. Routed experts of rank > 1 are method='moe'"
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
        if self.top_k is not None and not 1 <= self.top_k <= min(counts) + self.null_experts:
            null = f" + {self.null_experts} null" if self.null_experts else ""
            raise ValueError(f"top_k={self.top_k} must be between 1 and the number of experts ({min(counts)}{null})")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 < self.redundancy_tol < 1.0:
            raise ValueError(f"redundancy_tol must be in (0, 1), got {self.redundancy_tol}")
        if self.b_init_std is None:
            self.b_init_std = DEFAULT_B_INIT_STD[self.method]
        if self.b_init_std < 0 or (self.method in ORTHOGONAL_METHODS and self.b_init_std == 0):
            raise ValueError(f"b_init_std must be >= 0, and > 0 for method={self.method!r} (Gram–Schmidt needs "
                             f"non-zero expert outputs); got {self.b_init_std}")
        sparse = self.sparse
        if self.load_balance_coef is None:
            self.load_balance_coef = 0.01 if sparse else 0.0
        if self.router_z_coef is None:
            self.router_z_coef = 0.001 if sparse else 0.0

    def _check_variants(self) -> None:
        """Refuse the variant combinations that have no meaning, naming what is allowed."""
        if not isinstance(self.shared_expert, bool):
            raise ValueError(f"shared_expert must be True or False, got {self.shared_expert!r}")
        if self.shared_expert and self.method not in ("moe", "omoe"):
            raise ValueError(f"shared_expert=True is for method='moe' or 'omoe' (an always-active LoRA expert beside "
                             f"the routed ones), not method={self.method!r}")
        if isinstance(self.null_experts, bool) or int(self.null_experts) != self.null_experts or self.null_experts < 0:
            raise ValueError(f"null_experts must be an integer >= 0, got {self.null_experts!r}")
        self.null_experts = int(self.null_experts)
        if self.null_experts:
            if self.method == "lora":
                raise ValueError("null_experts need a router: use method='moe', 'omoe', 'mixlora' or 'omoe_mixlora', "
                                 "not 'lora'")
            if self.top_k is None and self.top_p is None:
                allowed = "top_k" if self.method in FFN_METHODS else "top_k or top_p"
                raise ValueError(
                    f"null_experts={self.null_experts} needs sparse routing: set {allowed} (AdaMoE: top-k over the "
                    "real and null experts). Under soft routing every null expert is always active and no token "
                    "uses fewer real experts"
                )
        if self.method in FFN_METHODS and self.top_p is not None:
            raise ValueError(f"method={self.method!r} takes top_k or soft routing, not top_p: the number of FFN "
                             "experts a token runs would depend on the data")
        penalty = self.orthogonality_penalty
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty >= 0:
            raise ValueError(f"orthogonality_penalty must be a number >= 0, got {penalty!r}")
        self.orthogonality_penalty = float(penalty)
        if penalty and self.method != "moe":
            why = {
                "lora": "a single LoRA has one expert and no pairs of experts to decorrelate",
                "omoe": "OMoE's mixed outputs are orthogonal by construction (the spec's point: no regularizer)",
                # e_i = a_i(x) b_i: cos(e_i, e_j) = ±cos(b_i, b_j) for every token, so the per-token
                # penalty would only be a fixed penalty on the angles between B's columns
                "smora": "a rank-1 expert's output a_i(x)·b_i always points along B's column b_i, so cos²(e_i, e_j) = "
                         "cos²(b_i, b_j) is the same for every token: a weight penalty on B, not a per-token one",
            }.get(self.method, "the FFN experts' changes do not live in rank space")
            raise ValueError(f"orthogonality_penalty is for method='moe' (vanilla MoE-LoRA plus the penalty); "
                             f"method={self.method!r}: {why}")

    def plain_lora_config(self) -> "AdapterConfig":
        """The config of the plain LoRAs an FFN method puts on selected linears outside the gated MLPs.

        Same rank, alpha, dropout and seed; ``B = 0``, so they start at zero even when the FFN
        experts (``omoe_mixlora``) start from a random B and a zero magnitude.
        """
        return dataclasses.replace(
            self, method="lora", b_init_std=0.0, top_k=None, top_p=None, null_experts=0, orthogonalize=None,
            experts_pattern=None, shared_expert=False, orthogonality_penalty=0.0, load_balance_coef=0.0,
            router_z_coef=0.0,
        )

    @property
    def ffn(self) -> bool:
        """Experts on whole gated MLP blocks (``mixlora``, ``omoe_mixlora``)."""
        return self.method in FFN_METHODS

    @property
    def sparse(self) -> bool:
        return self.top_k is not None or self.top_p is not None

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        """All fields, except variant options at their defaults (see ``VARIANT_DEFAULTS``)."""
        data = dataclasses.asdict(self)
        for name, default in VARIANT_DEFAULTS.items():
            if data[name] == default:
                del data[name]
        return data

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
