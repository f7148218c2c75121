"""One edge device: local data, DP-SGD with its durable ledger, signing key; global weights
in, signed update bytes out (:class:`EdgeNode`).

Order of operations inside :meth:`EdgeNode.train_round` (privacy invariant 3):

1. compute ε after the planned round from the ledger; refuse with
   :class:`~pipeline.privacy.ledger.BudgetExceededError` if it would exceed the budget;
2. train with Opacus DP-SGD (every noisy step lands in the ledger via the optimizer hook);
3. flush the ledger to disk (fsync + rename) and re-check the budget;
4. only then encode and sign the update.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.codec import Compression, encode_update
from pipeline.privacy import make_private, train_steps
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.tasks import Task, TrainConfig
from pipeline.weights import get_weights, set_weights, weight_delta
from schemas.update import ModelUpdate, PrivacyStamp

logger = logging.getLogger(__name__)

Weights = dict[str, np.ndarray]

#: Which parameters :meth:`EdgeNode.personalize` fine-tunes.
PersonalLayers = Literal["all", "head"]

#: ε written in the stamp of a non-private update (anchors only): "unbounded", kept finite for
#: the wire contract.
NO_DP_EPSILON = sys.float_info.max


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class EdgeNode:
    """One edge device: local data, DP-SGD, ledger and signing key.

    Parameters
    ----------
    node_id
        Wire-safe id (``[A-Za-z0-9_.:/-]``).
    task
        The task; the node only reads ``task.train_data(node_id)``.
    private_key
        Ed25519 private key (``pipeline.codec.generate_keypair()[0]``).
    ledger
        The node's privacy ledger; ``None`` trains without DP (benchmark anchors only).
    noise_multiplier
        DP-SGD σ; required when ``ledger`` is given.
    train_config
        Local hyper-parameters (default: ``task.train_config``).
    compression
        Update tensor encoding.
    seed, index
        Round r uses a seed derived from (seed, index, r).
    batch_size
        Expected local batch size (default ``train_config.batch_size``); :func:`simulate` sets it
        per node so that every node has the same sample rate.
    local_head
        FedPer-style personalisation: the last parametrised layer (the head) stays on the node.
        Each round trains the global body with this node's own head (DP-SGD on all parameters,
        as usual), and the update carries zeros for the head, so the server only averages the
        body. :meth:`personal_model` is the global model with this node's head.
    keep_optimizer_state
        Carry the local optimizer's state (Adam's moments, SGD momentum) from one round to the
        next instead of starting it fresh: it stays on the node (derived from the node's own
        noised gradients only, so post-processing under DP).

    Examples
    --------
    See :func:`simulate`.
    """

    def __init__(
        self,
        *,
        node_id: str,
        task: Task,
        private_key: bytes,
        ledger: PrivacyLedger | None,
        noise_multiplier: float | None = None,
        train_config: TrainConfig | None = None,
        compression: Compression = Compression.INT8,
        seed: int = 0,
        index: int = 0,
        batch_size: int | None = None,
        local_head: bool = False,
        keep_optimizer_state: bool = False,
    ) -> None:
        if ledger is not None and (noise_multiplier is None or noise_multiplier <= 0):
            raise ValueError("a DP node needs noise_multiplier > 0")
        self.node_id = node_id
        self.task = task
        self.ledger = ledger
        self.noise_multiplier = noise_multiplier
        self.config = train_config or task.train_config
        self.compression = Compression(compression)
        self.seed = seed
        self.index = index
        self._private_key = private_key
        self.data = task.train_data(node_id)
        self.batch_size = min(batch_size or self.config.batch_size, len(self.data))
        self.last_update: ModelUpdate | None = None
        self.personal_weights: Weights | None = None
        self.local_head = local_head
        self._head: Weights | None = None
        self.keep_optimizer_state = keep_optimizer_state
        self._optimizer_state: dict[str, Any] | None = None

    @property
    def sample_rate(self) -> float:
        """Poisson sample rate q of the local loader (Opacus: ``1 / len(loader)``)."""
        return 1.0 / len(DataLoader(self.data, batch_size=self.batch_size))

    @property
    def num_examples(self) -> int:
        """Local training examples."""
        return len(self.data)

    def _train(self, model: torch.nn.Module, generator: torch.Generator, *,
               steps: int | None = None, lr: float | None = None,
               optimizer_name: Literal["sgd", "adam"] | None = None,
               keep_state: bool = False) -> float:
        cfg = self.config
        if optimizer_name is not None:
            cfg = replace(cfg, optimizer=optimizer_name)
        steps = cfg.local_steps if steps is None else steps
        optimizer = cfg.make_optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
        if keep_state and self._optimizer_state is not None:
            optimizer.load_state_dict(self._optimizer_state)
        loss = self._train_with(model, generator, optimizer, steps)
        if keep_state:
            self._optimizer_state = optimizer.state_dict()
        return loss

    def _train_with(self, model: torch.nn.Module, generator: torch.Generator,
                    optimizer: torch.optim.Optimizer, steps: int) -> float:
        cfg = self.config
        loader = DataLoader(self.data, batch_size=self.batch_size, shuffle=True,
                            generator=generator)
        if self.ledger is None:
            loss_fn = self.task.loss_fn()
            total = 0.0
            it = iter(loader)
            for _ in range(steps):
                try:
                    x, y = next(it)
                except StopIteration:
                    it = iter(loader)
                    x, y = next(it)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
            return total / steps
        assert self.noise_multiplier is not None
        dp = make_private(module=model, optimizer=optimizer, data_loader=loader,
                          ledger=self.ledger, noise_multiplier=self.noise_multiplier,
                          max_grad_norm=cfg.max_grad_norm, grad_sample_mode=cfg.grad_sample_mode,
                          noise_generator=generator)
        return train_steps(dp, loss_fn=self.task.loss_fn(), steps=steps)

    def check_budget(self, steps: int | None = None) -> float:
        """Return ε after ``steps`` more local steps (default: one round); raise
        ``BudgetExceededError`` if that is above the budget."""
        if self.ledger is None or self.noise_multiplier is None:
            return NO_DP_EPSILON
        return self.ledger.check_round(noise_multiplier=self.noise_multiplier,
                                       sample_rate=self.sample_rate,
                                       steps=self.config.local_steps if steps is None else steps)

    def personal_model(self, global_weights: Mapping[str, np.ndarray]) -> Weights:
        """The model this node forecasts with: ``global_weights`` with its own head, if it keeps
        one (``local_head``) and has trained it; a copy of ``global_weights`` otherwise."""
        out = {k: np.array(v, np.float32, copy=True) for k, v in global_weights.items()}
        if self._head is not None:
            out.update({k: v.copy() for k, v in self._head.items()})
        return out

    def personalize(self, global_weights: Mapping[str, np.ndarray], *, steps: int,
                    lr: float | None = None, layers: PersonalLayers = "all",
                    round: int = 0, optimizer: Literal["sgd", "adam"] | None = None) -> Weights:
        """Fine-tune :meth:`personal_model` of ``global_weights`` (global model, or global body
        with this node's head) on this node's data with DP-SGD; keep the result here.

        The personalised model never leaves the node (nothing is encoded or published); the node
        serves its forecasts with it, so its training is DP-SGD like any round: the budget is
        checked for all ``steps`` first, every noisy step lands in the ledger, and the ledger is
        flushed (and re-checked) before the weights are returned and used. Plan the budget for
        it: :func:`simulate` calibrates σ for ``rounds × local_steps + steps``.

        Parameters
        ----------
        steps
            DP-SGD steps at the node's σ and sample rate.
        lr
            Learning rate (default: the local one of ``train_config``).
        layers
            ``"all"`` trains every parameter; ``"head"`` only the last parametrised layer
            (fewer noised coordinates, the shared body stays as the federation learned it).
        round
            Part of the seed (use the round after the last federated one).
        optimizer
            ``"sgd"`` or ``"adam"`` (default: the local one of ``train_config``).

        Raises
        ------
        BudgetExceededError
            before training if the steps would exceed the budget (nothing trained or recorded),
            or after, if the recorded spend does.
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.check_budget(steps)
        gen_seed = _seed(self.seed, self.index, round, 1)
        torch.manual_seed(gen_seed)
        generator = torch.Generator().manual_seed(gen_seed)
        model = self.task.build_model()
        set_weights(model, self.personal_model(global_weights))
        if layers == "head":
            head = _head_parameters(model)
            for p in model.parameters():
                p.requires_grad_(any(p is h for h in head))
        elif layers != "all":
            raise ValueError(f"layers must be 'all' or 'head', got {layers!r}")
        self._train(model, generator, steps=steps, lr=lr, optimizer_name=optimizer)
        if self.ledger is not None:
            self.ledger.check_publish()  # durable before the model serves anything
        self.personal_weights = get_weights(model)
        return self.personal_weights

    def train_round(self, global_weights: Mapping[str, np.ndarray], *, round: int,
                    version: int) -> bytes:
        """Train one round from ``global_weights`` and return the signed, encoded update.

        Raises
        ------
        BudgetExceededError
            before training, when the round would take ε above the budget (nothing trained,
            nothing recorded), or before publishing, if the recorded spend exceeds it.
        """
        self.check_budget()
        gen_seed = _seed(self.seed, self.index, round)
        torch.manual_seed(gen_seed)
        generator = torch.Generator().manual_seed(gen_seed)
        model = self.task.build_model()
        set_weights(model, self.personal_model(global_weights))
        loss = self._train(model, generator, keep_state=self.keep_optimizer_state)
        trained = get_weights(model)
        delta = weight_delta(trained, global_weights)
        if self.local_head:
            names = _head_names(model)
            self._head = {k: trained[k] for k in names}
            for k in names:  # the head never leaves the node
                delta[k] = np.zeros_like(delta[k])
        if self.ledger is not None:
            epsilon = self.ledger.check_publish()  # durable before anything leaves the node
            stamp = PrivacyStamp(epsilon=epsilon, delta=self.ledger.delta,
                                 noise_multiplier=float(self.noise_multiplier or 0.0),
                                 sample_rate=self.sample_rate, steps=self.config.local_steps,
                                 accountant=self.ledger.mechanism)
        else:
            stamp = PrivacyStamp(epsilon=NO_DP_EPSILON, delta=0.0, noise_multiplier=0.0,
                                 sample_rate=self.sample_rate, steps=self.config.local_steps,
                                 accountant="rdp")
        update = ModelUpdate(node_id=self.node_id, task=self.task.name, round=round,
                             base_version=version, num_examples=self.num_examples,
                             metrics={"train_loss": loss}, privacy=stamp, delta=delta)
        self.last_update = update
        return encode_update(update, private_key=self._private_key, compression=self.compression)


def _head_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters of the last submodule (in registration order) that owns parameters."""
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise ValueError("model has no parameters")
    return list(owners[-1].parameters(recurse=False))


def _head_names(model: torch.nn.Module) -> list[str]:
    """Weight names (as in :func:`~pipeline.weights.get_weights`) of the head parameters."""
    head = _head_parameters(model)
    return [n for n, p in model.named_parameters() if any(p is h for h in head)]


# ---------------------------------------------------------------------------- node workers

def common_batch_sizes(sizes: Sequence[int], *, batch_size: int) -> list[int]:
    """Per-node batch sizes giving every node the same sample rate q = 1/k.

    k is chosen so that a node of median size gets about ``batch_size``. Sharing q (and hence σ)
    means one noise calibration and one ε computation per round serve every node: the PRV
    accountant costs about a second per distinct history on this CPU.

    Examples
    --------
    >>> common_batch_sizes([1000, 2000, 4000], batch_size=100)
    [50, 100, 200]
    """
    k = max(1, round(float(np.median(sizes)) / batch_size))
    return [max(1, -(-n // k)) for n in sizes]


