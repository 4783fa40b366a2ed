"""Serving: export signatures, the embedded model server, the canary router, the gRPC client."""
import crocodile  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
