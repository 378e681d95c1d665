"""Weights as token sequences: tokenize, standardize, permutation symmetries, baselines."""

from sane.weights.align import Alignment, align_zoo, choose_reference, zoo_permutation_spec
from sane.weights.baselines import (
    BASELINES,
    sw_layer,
    sw_tensor_std,
    sw_tensor_var,
    w_features,
)
from sane.weights.manifest import ExcludedTensor, TokenLayer, TokenManifest
from sane.weights.matching import distance, weight_matching
from sane.weights.permutations import (
    PermutationSpec,
    apply_permutation,
    compose,
    identity_permutation,
    invert,
    permutation_spec,
    random_permutation,
)
from sane.weights.standardize import Standardization, TensorStats, fit_standardization
from sane.weights.tokenize import (
    Tokens,
    detokenize,
    make_manifest,
    tokenize,
    tokenize_into,
)
from sane.weights.tokenizer import Tokenizer

__all__ = [
    "BASELINES",
    "Alignment",
    "ExcludedTensor",
    "PermutationSpec",
    "Standardization",
    "TensorStats",
    "TokenLayer",
    "TokenManifest",
    "Tokenizer",
    "Tokens",
    "align_zoo",
    "apply_permutation",
    "choose_reference",
    "compose",
    "detokenize",
    "distance",
    "fit_standardization",
    "identity_permutation",
    "invert",
    "make_manifest",
    "permutation_spec",
    "random_permutation",
    "sw_layer",
    "sw_tensor_std",
    "sw_tensor_var",
    "tokenize",
    "tokenize_into",
    "w_features",
    "weight_matching",
    "zoo_permutation_spec",
]
