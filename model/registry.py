"""One registry of every model: `build_model(name, feature_config, vocab_sizes, hparams)`.

Call inside `strategy.scope()` when training with tf.distribute.
"""
from typing import Callable, Dict, Mapping

from crocodile.model.cctl import CCTLNetwork, build_cctl_model
from crocodile.model.crocodile_network import CrocodileNetwork
from crocodile.model.domain_networks import AdaSparseNetwork, HiNetNetwork, MLoRANetwork, PEPNetNetwork
from crocodile.model.edda import EDDANetwork, build_edda_model
from crocodile.model.features import FeatureConfig
from crocodile.model.hparams import resolve
from crocodile.model.moe_networks import MMoENetwork, ProgressiveNetwork, SharedBottomNetwork, SingleDomainNetwork
from crocodile.model.multi_domain_model import MultiDomainModel
from crocodile.model.star import StarNetwork

_NETWORKS: Dict[str, Callable] = {
    "single_domain": SingleDomainNetwork,
    "shared_bottom": SharedBottomNetwork,
    "mmoe": MMoENetwork,
    "ple": lambda *a, **k: ProgressiveNetwork(*a, variant="ple", **k),
    "me_mmoe": lambda *a, **k: MMoENetwork(*a, multi_embedding=True, **k),
    "me_ple": lambda *a, **k: ProgressiveNetwork(*a, variant="me_ple", **k),
    "stem": lambda *a, **k: ProgressiveNetwork(*a, variant="stem", **k),
    "pepnet": PEPNetNetwork,
    "hinet": HiNetNetwork,
    "star": StarNetwork,
    "adasparse": AdaSparseNetwork,
    "mlora": MLoRANetwork,
    "crocodile": CrocodileNetwork,
    "cctl": CCTLNetwork,
    "edda": EDDANetwork,
}
MODEL_NAMES = tuple(_NETWORKS)
# Models whose training model adds training-only parts of its own around the network.
_TRAINING_MODELS: Dict[str, Callable] = {
    "cctl": build_cctl_model,
    "edda": build_edda_model,
}


def build_model(name: str, feature_config: FeatureConfig, vocab_sizes: Mapping[str, int], hparams=None) -> MultiDomainModel:
    """A `MultiDomainModel` (tfrs.Model) whose `network` is the named architecture.

    hparams: None (defaults of the model), an HParams, or a dict overriding defaults.
    Only Crocodile carries the disentangling loss (`disentangle_loss`, 'none' for B only).
    """
    if name not in _NETWORKS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    h = resolve(name, hparams)
    network = _NETWORKS[name](feature_config, vocab_sizes, h, name=f"{name}_network")
    if name in _TRAINING_MODELS:
        return _TRAINING_MODELS[name](network, h, feature_config, vocab_sizes, name=name)
    disentangle = h.disentangle_loss if name == "crocodile" else None
    return MultiDomainModel(network, h, feature_config.num_domains, disentangle=disentangle, name=name)
