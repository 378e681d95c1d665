"""The behavioural loss of pretraining (issue 20; Meynent et al. 2025): whole models decoded
by SANE against their originals, by what they compute.

Each step draws ``models`` training checkpoints of the store, encodes and decodes them whole
through haloed windows as inference does (:meth:`SANE.encode_sequence`,
:meth:`SANE.decode_sequence`, with gradients), de-standardizes the decoded tokens into the
architecture's tensors (a gather by a precomputed index and the tokenizer's per-tensor
affine map, so that gradients flow into the weights), runs the decoded models on ``images``
training images of the zoo (:func:`torch.func.functional_call`) and compares their class
probabilities with the originals' by KL divergence ``KL(p_original ‖ p_decoded)``, averaged
over images and models.

Models with batch norm are refused: their decoded outputs depend on statistics the tokens
do not hold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from sane.errors import ConfigError
from sane.model.sane import SANE
from sane.weights.store import TokenStore
from sane.weights.token_ranges import detokenize_pieces
from sane.zoo import build_model
from sane.zoo.batchnorm import has_batchnorm
from sane.zoo.evaluation import zoo_data
from sane.zoo.layout import as_architecture
from sane.zoo.storage import Zoo

# Token indices are carried through detokenization as float32 values: exact below 2**24.
MAX_VALUES = 2**24


class BehaviourLoss:
    """The behavioural loss on ``store``'s training checkpoints (without batch norm; each in
    its own architecture, e.g. its activation): ``models`` checkpoints per step, scored on
    ``images`` of the zoo's training images drawn anew each step."""

    def __init__(self, store: TokenStore, *, models: int, images: int) -> None:
        self.nets = [build_model(a, seed=0).eval() for a in store.architectures]
        if any(has_batchnorm(net) for net in self.nets):
            raise ConfigError("the behavioural loss compares models without batch norm; "
                              f"{store.architectures[0].name} has batch norm")
        arch = store.architectures[0]
        manifest = store.manifest
        if manifest.num_tokens * manifest.token_size >= MAX_VALUES:
            raise ConfigError(f"the behavioural loss handles models of up to {MAX_VALUES} "
                              "token values")
        if models < 1 or images < 1:
            raise ConfigError("the behavioural loss needs models >= 1 and images >= 1")
        self.store, self.models, self.images = store, models, images
        self.rows = torch.as_tensor(store.split_rows("train"))
        self.data = zoo_data(Zoo.open(store.zoo_path)).train.x
        # Where each weight sits among a model's flattened tokens: detokenize the indices.
        flat = torch.arange(manifest.num_tokens * manifest.token_size, dtype=torch.float32)
        where = detokenize_pieces([(0, flat.view(manifest.num_tokens, -1))], manifest)
        keys = manifest.tokenized_keys()
        names = dict(zip(where, as_architecture(arch, where)))  # canonical -> module keys
        self.index = {names[k]: where[k].long() for k in keys}
        self.canonical = {names[k]: k for k in keys}

    def __call__(self, model: SANE, generator: torch.Generator) -> torch.Tensor:
        """The loss of one step (differentiable in ``model``'s parameters)."""
        rows = self.rows[torch.randint(len(self.rows), (self.models,), generator=generator)]
        tokens = torch.from_numpy(self.store.tokens[rows.numpy()]).float()
        images = self.data[torch.randint(len(self.data), (self.images,), generator=generator)]
        positions = self.store.positions
        decoded = model.decode_sequence(model.encode_sequence(tokens, positions), positions)
        loss = tokens.new_zeros(())
        for row, original, new in zip(rows.tolist(), tokens, decoded.float()):
            net = self.nets[self.store.row_architecture[row]]
            with torch.no_grad():
                target = F.log_softmax(self.outputs(net, original, images), dim=-1)
            predicted = F.log_softmax(self.outputs(net, new, images), dim=-1)
            loss = loss + F.kl_div(predicted, target, log_target=True, reduction="batchmean")
        return loss / self.models

    def outputs(self, net: torch.nn.Module, tokens: torch.Tensor, images: torch.Tensor
                ) -> torch.Tensor:
        """Logits ``[I, classes]`` on ``images`` of ``net`` (one of :attr:`nets`) holding the
        weights of the standardized ``tokens [N, d_t]``, differentiable in ``tokens``."""
        flat = tokens.flatten()
        standardization = self.store.tokenizer.standardization
        params = {name: standardization.destandardize(self.canonical[name], flat[index])
                  for name, index in self.index.items()}
        return functional_call(net, params, (images,))
