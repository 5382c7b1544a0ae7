"""Weight clustering (Han et al., Deep Compression, 2016) with tfmot.

Each clustered kernel keeps only K distinct values (the centroids), so it
compresses well and can be stored as K floats plus log2(K)-bit indices. With
`preserve_sparsity=True` zeros left by pruning stay zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mobilecv.compress._common import (
    check_supported,
    clone,
    copy_layer,
    kernels,
    require_tf_keras,
    unique_counts,
)
from mobilecv.errors import InputError

TECHNIQUE = "cluster"

# Layer type -> weights clustered; an empty tuple means "allowed, left as is"
# (tfmot's clustering registry clusters no depthwise weights).
SUPPORTED_LAYERS: dict[str, tuple[str, ...]] = {
    "Conv2D": ("kernel",),
    "DepthwiseConv2D": (),
    "Dense": ("kernel",),
}


@dataclass
class ClusterInfo:
    clusters: int
    preserve_sparsity: bool
    layers: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def cluster(model, clusters: int, *, preserve_sparsity: bool = False):
    """Wrap supported layers for K-means weight clustering. Returns (wrapped_model, ClusterInfo)."""
    import tensorflow_model_optimization as tfmot

    require_tf_keras(model, TECHNIQUE)
    if int(clusters) < 2:
        raise InputError(f"cluster: the number of clusters must be at least 2, got {clusters}")
    check_supported(model, TECHNIQUE, SUPPORTED_LAYERS)
    info = ClusterInfo(clusters=int(clusters), preserve_sparsity=bool(preserve_sparsity))
    api = tfmot.clustering.keras

    def wrap(layer):
        attrs = SUPPORTED_LAYERS.get(type(layer).__name__)
        if not attrs:
            if type(layer).__name__ in SUPPORTED_LAYERS:
                info.skipped[layer.name] = f"tfmot clusters no {type(layer).__name__} weights"
            return copy_layer(layer)
        size = int(getattr(layer, attrs[0]).shape.num_elements())
        if size <= clusters:
            info.skipped[layer.name] = f"{size} weights are not more than {clusters} clusters"
            return copy_layer(layer)
        info.layers.append(layer.name)
        return api.cluster_weights(
            copy_layer(layer),
            number_of_clusters=int(clusters),
            cluster_centroids_init=api.CentroidInitialization.KMEANS_PLUS_PLUS,
            preserve_sparsity=bool(preserve_sparsity),
        )

    wrapped = clone(model, wrap)
    if not info.layers:
        raise InputError(f"{TECHNIQUE}: no layer has more than {clusters} weights to cluster")
    return wrapped, info


def strip(model):
    """Remove clustering wrappers; kernels keep their clustered (centroid) values."""
    import tensorflow_model_optimization as tfmot

    from mobilecv.modelinfo import carry

    return carry(model, tfmot.clustering.keras.strip_clustering(model))


def unique_weights(model, layers: list[str] | None = None) -> dict[str, int]:
    """Distinct values per clustered kernel (meaningful after strip())."""
    return unique_counts(kernels(model, SUPPORTED_LAYERS, set(layers) if layers else None))
