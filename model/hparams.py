"""Hyperparameters of every model, in one place.

Defaults are sized for a 2-core CPU (DESIGN section 9). The paper gives no sizes;
the STEM configuration of the same group is the prior (DESIGN 5.8): e = 16, Adam
lr 1e-3, embedding L2 1e-6, gradient clipping 10, early stopping on validation AUC.
Expert and tower widths are smaller than STEM's [512, 512, 512] so that the quality
benchmark finishes on CPU (choice the paper leaves open).
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

# Keys of the dict a network returns.
PROBABILITY = "probability"
LOGIT = "logit"
EXPERT_OUTPUTS = "expert_outputs"
EXPERT_PRE_ACTIVATIONS = "expert_pre_activations"   # training only (Crocodile): the experts' last ReLU input


@dataclasses.dataclass(frozen=True)
class HParams:
    """Every knob of every model. Models read only the fields they need."""

    # Embeddings.
    embedding_dim: int = 16
    num_embedding_sets: int = 5          # M (paper's main setting; Table 6 sweeps 2..10)
    embedding: str = "me"                # crocodile ablation (Table 5): "me" | "se"
    embedding_l2: float = 1e-6           # lambda/2 * ||W||^2 over whole tables (STEM / FuxiCTR)
    embedding_init_stddev: float = 0.01  # (I) FuxiCTR uses 1e-4; 1e-2 trains faster at small sizes
    # Experts and towers.
    expert_units: Tuple[int, ...] = (128, 64)
    tower_units: Tuple[int, ...] = (32,)
    num_experts: int = 4                 # MMoE / shared-bottom family (M for ME models is num_embedding_sets)
    num_shared_experts: int = 1          # PLE / ME-PLE / STEM / HiNet
    num_specific_experts: int = 1        # per domain, PLE / ME-PLE / STEM / HiNet
    ple_levels: int = 1                  # CGC levels of PLE
    # Crocodile gating (Table 5): "peg" prior element-wise | "pg" prior expert-level |
    # "eg" element-wise on the sample's embeddings | "g" expert-level on the sample's embeddings.
    gate: str = "peg"
    prior_embedding_dim: int = 16        # (I) the paper does not give e_p
    # Crocodile's disentangling loss (Table 4): "cov" | "dot" | "cos" | "dcorr" | "ole" | "none".
    disentangle_loss: str = "cov"
    # lambda and rows (I), from the covariance-loss study (model/RESULTS.md): best mean validation
    # AUC over 3 seeds of rows {32, 256, batch} x lambda {0, 0.01, 0.1, 1}. At lambda = 1 a third
    # of the expert units die whatever the rows; at 0.1 no more than without the loss.
    disentangle_weight: float = 0.1
    disentangle_rows: int = 256          # rows sampled per step for the loss (paper: 32); 0 = the whole batch
    # How the rows are drawn (I): "uniform" over the batch, or "stratified": an equal quota of
    # rows per domain present in the batch, so a 1.5%-traffic domain is not ~0.5 row of 32.
    disentangle_sampling: str = "uniform"
    disentangle_warmup_steps: int = 0    # lambda ramps linearly from 0 over this many steps (I)
    # Departures from the paper, for the study of dead experts (all training-only, all (I)):
    # "outputs": the paper's post-ReLU expert outputs; "pre_activations": the last expert layer
    # before its ReLU (a dead unit still has a gradient there).
    disentangle_input: str = "outputs"
    disentangle_standardise: bool = False  # divide each unit by its std over the rows: a correlation, not a covariance
    variance_hinge_weight: float = 0.0   # VICReg-style mean_j max(0, gamma - std_j) over units, same input (I)
    variance_hinge_target: float = 0.1   # gamma of the hinge (I: VICReg uses 1 on normalised features)
    # Tail domains (I): shrink each domain's gate kernel towards the mean over domains,
    # gate_shrinkage/2 * sum_s ||W_s - mean_s W_s||^2 (a small domain borrows the others' gate).
    gate_shrinkage: float = 0.0
    prior_l2: bool = True                # embedding_l2 also covers the prior tables (DESIGN 5.8 puts them under it)
    # Baseline-specific sizes.
    lora_rank: int = 4                   # MLoRA
    pepnet_gate_units: int = 64          # PEPNet Gate NU hidden width
    pepnet_gamma: float = 2.0            # PEPNet Gate NU output scale (gamma * sigmoid)
    star_aux_units: Tuple[int, ...] = (32,)
    star_momentum: float = 0.99          # partitioned-normalisation moving statistics
    adasparse_epsilon: float = 0.25      # AdaSparse fusion pruner: zero below epsilon
    adasparse_beta: float = 2.0
    adasparse_alpha_init: float = 1.0
    adasparse_alpha_step: float = 1e-4   # alpha grows by this per training step, capped
    adasparse_alpha_max: float = 5.0
    # Optimisation.
    learning_rate: float = 1e-3
    clipnorm: float = 10.0
    batch_size: int = 2048
    epochs: int = 3
    early_stopping_patience: int = 1
    seed: int = 0

    def replace(self, **changes) -> "HParams":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


DISENTANGLE_SAMPLINGS = ("uniform", "stratified")
DISENTANGLE_INPUTS = ("outputs", "pre_activations")


def check_training_options(hparams: HParams) -> None:
    """Clear errors for Crocodile's training-only options before any graph is built."""
    if hparams.disentangle_sampling not in DISENTANGLE_SAMPLINGS:
        raise ValueError(f"disentangle_sampling must be one of {DISENTANGLE_SAMPLINGS}, "
                         f"got {hparams.disentangle_sampling!r}")
    if hparams.disentangle_input not in DISENTANGLE_INPUTS:
        raise ValueError(f"disentangle_input must be one of {DISENTANGLE_INPUTS}, got {hparams.disentangle_input!r}")
    if hparams.disentangle_rows == 1 or hparams.disentangle_rows < 0:
        raise ValueError(f"disentangle_rows must be 0 (whole batch) or >= 2, got {hparams.disentangle_rows}")
    if hparams.disentangle_warmup_steps < 0:
        raise ValueError(f"disentangle_warmup_steps must be >= 0, got {hparams.disentangle_warmup_steps}")
    for name in ("variance_hinge_weight", "gate_shrinkage", "embedding_l2"):
        if getattr(hparams, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(hparams, name)}")


# Per-model overrides of the defaults (the ME baselines use M = S sets: one per domain).
MODEL_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "crocodile": {},
    "mmoe": {"num_experts": 5},
}


def resolve(name: str, hparams: Optional[Any] = None) -> HParams:
    """Defaults for `name`, overridden by an HParams or a dict of field values."""
    base = HParams(**MODEL_DEFAULTS.get(name, {}))
    if hparams is None:
        return base
    if isinstance(hparams, HParams):
        return hparams
    if isinstance(hparams, Mapping):
        known = {f.name for f in dataclasses.fields(HParams)}
        unknown = set(hparams) - known
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in hparams.items()}
        resolved = base.replace(**values)
        check_training_options(resolved)
        return resolved
    raise TypeError(f"hparams must be HParams, a dict or None, not {type(hparams).__name__}")
