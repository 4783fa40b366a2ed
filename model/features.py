"""Feature configuration and the canonical impression-log schema.

This is the one place that names columns. Logs, the TFT ``preprocessing_fn``, the
models, the servers and the simulators all read it from here.

One log row is one impression (DESIGN section 4). Required columns: ``user_id`` and
``item_id`` (strings, bytes features in a tf.Example), ``domain_id`` (int64, 0..S-1)
and ``click`` (int64, 0/1). The feature config adds any number of categorical (string)
and numeric (float) columns.
"""
import dataclasses
import json
from typing import Dict, Tuple

USER_KEY = "user_id"
ITEM_KEY = "item_id"
DOMAIN_KEY = "domain_id"
LABEL_KEY = "click"

# Optional log columns that are never model inputs: outcomes, bookkeeping, and
# `position`, which is unknown when a candidate is scored.
PURCHASE_KEY = "purchase"
PRICE_KEY = "price"
POSITION_KEY = "position"
REQUEST_ID_KEY = "request_id"
TIMESTAMP_KEY = "timestamp"

# dtype of each required column, as stored in a tf.Example: "bytes" | "int64" | "float".
REQUIRED_COLUMNS: Dict[str, str] = {
    USER_KEY: "bytes",
    ITEM_KEY: "bytes",
    DOMAIN_KEY: "int64",
    LABEL_KEY: "int64",
}
OPTIONAL_COLUMNS: Dict[str, str] = {
    PURCHASE_KEY: "int64",
    PRICE_KEY: "float",
    POSITION_KEY: "int64",
    REQUEST_ID_KEY: "bytes",
    TIMESTAMP_KEY: "int64",
}


def transformed_name(key: str) -> str:
    """Name of a feature after the TFT transform (the TFX template's `_xf` convention)."""
    return key + "_xf"


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Which log columns feed the model, and how the vocabularies are built.

    ``categorical`` must include the user and item id columns. ``domain_id`` is not
    listed: it is always an input, kept as its raw integer 0..num_domains-1.
    """

    categorical: Tuple[str, ...]
    numeric: Tuple[str, ...]
    num_domains: int
    # The Crocodile paper replaces feature values seen fewer than 10 times by a default:
    # a TFT vocabulary with this frequency threshold plus OOV buckets.
    vocab_frequency_threshold: int = 10
    num_oov_buckets: int = 1
    # Prior fields of Crocodile's prior-informed gate (paper: user id, item id, domain id).
    prior_fields: Tuple[str, ...] = (USER_KEY, ITEM_KEY, DOMAIN_KEY)

    def __post_init__(self):
        for key in (USER_KEY, ITEM_KEY):
            if key not in self.categorical:
                raise ValueError(f"feature config: categorical features must include {key!r}")
        overlap = set(self.categorical) & set(self.numeric)
        if overlap:
            raise ValueError(f"feature config: {sorted(overlap)} listed as both categorical and numeric")
        reserved = {DOMAIN_KEY, LABEL_KEY, PURCHASE_KEY, POSITION_KEY, REQUEST_ID_KEY, TIMESTAMP_KEY}
        bad = reserved & (set(self.categorical) | set(self.numeric))
        if bad:
            raise ValueError(f"feature config: {sorted(bad)} cannot be model features")
        if self.num_domains < 1:
            raise ValueError("feature config: num_domains must be >= 1")

    @property
    def raw_feature_columns(self) -> Dict[str, str]:
        """Every column a serving request must carry for this config, with its dtype."""
        columns = {key: "bytes" for key in self.categorical}
        columns.update({key: "float" for key in self.numeric})
        columns[DOMAIN_KEY] = "int64"
        return columns

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"feature config: unknown keys {sorted(unknown)}")
        values = dict(data)
        for key in ("categorical", "numeric", "prior_fields"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load(cls, path: str) -> "FeatureConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


# Columns of the synthetic world's logs (crocodile.simulation.world). The user profile
# fields are correlated with the users' latent preferences; price is lognormal.
WORLD_FEATURES = FeatureConfig(
    categorical=(USER_KEY, ITEM_KEY, "user_segment", "user_region", "item_category"),
    numeric=(PRICE_KEY,),
    num_domains=5,
)
