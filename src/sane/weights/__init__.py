"""Weights as token sequences: tokenize, standardize, permutation symmetries, baselines.

The package exports what users call; helpers the library itself needs (permutation algebra,
manifest entries, per-tensor statistics...) are imported from their modules.
"""

from sane.weights.align import Alignment, align_zoo
from sane.weights.baselines import (
    BASELINES,
    sw_layer,
    sw_tensor_std,
    sw_tensor_var,
    w_features,
)
from sane.weights.manifest import TokenManifest
from sane.weights.matching import distance, weight_matching
from sane.weights.permutations import (
    PermutationSpec,
    apply_permutation,
    permutation_spec,
    random_permutation,
)
from sane.weights.standardize import Standardization, fit_standardization
from sane.weights.tokenize import Tokens, detokenize, make_manifest, tokenize
from sane.weights.tokenizer import Tokenizer
from sane.weights.zoo_tokenizer import ZooFit, fit_zoo

__all__ = [
    "BASELINES",
    "Alignment",
    "PermutationSpec",
    "Standardization",
    "TokenManifest",
    "Tokenizer",
    "Tokens",
    "ZooFit",
    "align_zoo",
    "apply_permutation",
    "detokenize",
    "distance",
    "fit_standardization",
    "fit_zoo",
    "make_manifest",
    "permutation_spec",
    "random_permutation",
    "sw_layer",
    "sw_tensor_std",
    "sw_tensor_var",
    "tokenize",
    "w_features",
    "weight_matching",
]
