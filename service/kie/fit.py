"""The model-level machinery of SER and RE: examples, losses, the fit loop, logits, metrics, calibration (Paddle dygraph, CPU)."""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import paddle
from paddle.nn import functional as F
from tqdm import tqdm

from service.document import Document
from service.kie.features import DocumentFeatures, featurize
from service.kie.metrics import PRF, link_scores, ser_scores
from service.kie.model import ReModel, SerModel
from service.tasks.kie_common import DEFAULTS as KIE_DEFAULTS

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class TrainSettings:
    """Hyper-parameters; the defaults are the SER / RE tasks' own (service/tasks/kie_common.py)."""

    epochs: int = KIE_DEFAULTS.epochs
    batch_size: int = KIE_DEFAULTS.batch_size
    learning_rate: float = KIE_DEFAULTS.learning_rate
    weight_decay: float = KIE_DEFAULTS.weight_decay
    dim: int = KIE_DEFAULTS.dim
    layers: int = KIE_DEFAULTS.layers
    heads: int = KIE_DEFAULTS.heads
    embed_dim: int = KIE_DEFAULTS.embed_dim
    dropout: float = KIE_DEFAULTS.dropout
    seed: int = KIE_DEFAULTS.seed

    def encoder_args(self) -> dict[str, Any]:
        """Keyword arguments of :class:`SegmentEncoder`."""
        return {"dim": self.dim, "heads": self.heads, "layers": self.layers,
                "embed_dim": self.embed_dim, "dropout": self.dropout}


@dataclass
class SerTrainSettings(TrainSettings):
    """SER's settings: the shared ones plus the loss's label weighting (``kie.training.class_balance``)."""

    class_balance: str = "inverse_sqrt"  # "inverse_sqrt" or "none" (see :func:`class_weights`)


@dataclass
class Example:
    """One document ready for training: features and targets."""

    features: DocumentFeatures
    labels: np.ndarray  # (N,) label index or IGNORE
    links: np.ndarray  # (N, N) 1.0 where segment i is the key of segment j
    label_probs: np.ndarray  # (N, labels): RE's view of the segments' labels (gold or SER's)


@dataclass
class History:
    """What happened during training, epoch by epoch."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0


def set_seed(seed: int) -> None:
    """Make a training run reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def make_example(document: Document, labels: Sequence[str]) -> Example:
    """Features and targets of a gold document; labels outside ``labels`` are ignored."""
    features = featurize(document)
    index = {label: i for i, label in enumerate(labels)}
    position = {sid: i for i, sid in enumerate(features.segment_ids)}
    by_id = {s.id: s for s in document.segments}
    targets = np.array([index.get((by_id[sid].label or "").lower(), IGNORE) for sid in features.segment_ids],
                       dtype=np.int64)
    links = np.zeros((len(position), len(position)), dtype=np.float32)
    for link in document.links:
        if link.key in position and link.value in position:
            links[position[link.key], position[link.value]] = 1.0
    return Example(features, targets, links, one_hot(targets, len(labels)))


def one_hot(targets: np.ndarray, num_labels: int) -> np.ndarray:
    """(N, labels) one-hot rows; ignored targets get a uniform row."""
    rows = np.full((len(targets), num_labels), 1.0 / num_labels, dtype=np.float32)
    known = targets != IGNORE
    rows[known] = np.eye(num_labels, dtype=np.float32)[targets[known]]
    return rows


def with_label_probs(examples: Sequence[Example], probabilities: Sequence[np.ndarray]) -> list[Example]:
    """Copies of examples whose RE label input is SER's predicted distribution."""
    return [Example(e.features, e.labels, e.links, p.astype(np.float32)) for e, p in zip(examples, probabilities)]


def label_confusion(examples: Sequence[Example], probabilities: Sequence[np.ndarray], num_labels: int) -> np.ndarray:
    """Row-normalized confusion matrix P(predicted | gold) of a label source on labelled examples."""
    counts = np.ones((num_labels, num_labels)) * 0.5  # a little smoothing: every confusion possible
    for e, p in zip(examples, probabilities):
        keep = e.labels != IGNORE
        np.add.at(counts, (e.labels[keep], p[keep].argmax(axis=1)), 1.0)
    return counts / counts.sum(axis=1, keepdims=True)


def noisy_label_probs(examples: Sequence[Example], rng: np.random.Generator,
                      confusion: np.ndarray | None = None, flip: float = 0.1) -> list[Example]:
    """Training copies whose label input looks like SER's output rather than the gold.

    With ``confusion`` (P(SER says j | gold i), measured on validation) each segment's label is
    re-drawn from SER's real mistakes; without it a uniform ``flip`` rate is used. The chosen label
    gets a random confidence, the rest is spread evenly.
    """
    noisy = []
    for e in examples:
        n, k = e.label_probs.shape
        gold = e.label_probs.argmax(axis=1)
        if confusion is not None:
            drawn = np.array([rng.choice(k, p=confusion[g]) for g in gold])
        else:
            drawn = np.where(rng.random(n) < flip, rng.integers(0, k, n), gold)
        confidence = rng.uniform(0.4, 1.0, n)
        probs = np.tile(((1.0 - confidence) / max(k - 1, 1))[:, None], (1, k))
        probs[np.arange(n), drawn] = confidence
        noisy.append(Example(e.features, e.labels, e.links, probs.astype(np.float32)))
    return noisy


def collate(examples: Sequence[Example]) -> dict[str, paddle.Tensor]:
    """Pad a batch of documents to the largest one; ``mask`` marks real segments."""
    n = max(1, max(len(e.labels) for e in examples))
    b = len(examples)
    first = examples[0].features
    tokens = np.zeros((b, n, first.tokens.shape[1]), dtype=np.int64)
    cues = np.zeros((b, n, first.cues.shape[1]), dtype=np.float32)
    boxes = np.zeros((b, n, first.boxes.shape[1]), dtype=np.float32)
    pairs = np.zeros((b, n, n, first.pairs.shape[2]), dtype=np.float32)
    mask = np.zeros((b, n), dtype=np.float32)
    labels = np.full((b, n), IGNORE, dtype=np.int64)
    links = np.zeros((b, n, n), dtype=np.float32)
    label_probs = np.zeros((b, n, examples[0].label_probs.shape[1]), dtype=np.float32)
    for i, e in enumerate(examples):
        k = len(e.labels)
        tokens[i, :k], cues[i, :k], boxes[i, :k] = e.features.tokens, e.features.cues, e.features.boxes
        pairs[i, :k, :k], mask[i, :k], labels[i, :k], links[i, :k, :k] = e.features.pairs, 1.0, e.labels, e.links
        label_probs[i, :k] = e.label_probs
    arrays = {"tokens": tokens, "cues": cues, "boxes": boxes, "pairs": pairs, "mask": mask,
              "labels": labels, "links": links, "label_probs": label_probs}
    return {k: paddle.to_tensor(v) for k, v in arrays.items()}


MODEL_INPUTS = ("tokens", "cues", "boxes", "pairs", "mask")


def _inputs(batch: dict[str, paddle.Tensor]) -> list[paddle.Tensor]:
    return [batch[k] for k in MODEL_INPUTS]


def ser_loss(model: SerModel, batch: dict[str, paddle.Tensor]) -> paddle.Tensor:
    """Cross-entropy over the labelled segments."""
    logits = model(*_inputs(batch))
    return F.cross_entropy(logits.reshape([-1, logits.shape[-1]]), batch["labels"].reshape([-1]),
                           ignore_index=IGNORE)


def class_weights(examples: Sequence[Example], num_labels: int, mode: str = "inverse_sqrt") -> np.ndarray:
    """SER loss weight per label: 1/sqrt of its share of the labelled training segments, mean 1 over the
    labels seen ("none": all 1). A field with one segment per document then weighs as much as a few
    `other` segments instead of one in fifty; labels never seen get the largest weight seen."""
    if mode == "none":
        return np.ones(num_labels, dtype=np.float32)
    counts = np.zeros(num_labels)
    for e in examples:
        np.add.at(counts, e.labels[e.labels != IGNORE], 1.0)
    seen = counts > 0
    if not seen.any():
        return np.ones(num_labels, dtype=np.float32)
    weights = np.zeros(num_labels)
    weights[seen] = 1.0 / np.sqrt(counts[seen] / counts.sum())
    weights[seen] /= weights[seen].mean()
    weights[~seen] = weights[seen].max()
    return weights.astype(np.float32)


def weighted_ser_loss(weights: np.ndarray) -> Callable[[SerModel, dict[str, paddle.Tensor]], paddle.Tensor]:
    """Cross-entropy over the labelled segments with a weight per label (mean over the weights drawn)."""
    weight = paddle.to_tensor(weights.astype(np.float32))

    def loss(model: SerModel, batch: dict[str, paddle.Tensor]) -> paddle.Tensor:
        logits = model(*_inputs(batch))
        return F.cross_entropy(logits.reshape([-1, logits.shape[-1]]), batch["labels"].reshape([-1]),
                               weight=weight, ignore_index=IGNORE)

    return loss


def macro_hmean(scores: dict[str, PRF], labels: Sequence[str], ignored: str = "other") -> float:
    """Mean Hmean over the labels (but ``ignored``) that occur in the gold or the predictions:
    the validation score that picks the best epoch, so a rare field counts as much as a common one."""
    counted = [scores[label].hmean for label in labels
               if label != ignored and (scores[label].ground_truth or scores[label].predicted)]
    return float(np.mean(counted)) if counted else 0.0


def pair_mask(mask: paddle.Tensor) -> paddle.Tensor:
    """(B, N, N) mask of real, distinct ordered pairs."""
    n = mask.shape[1]
    return mask.unsqueeze(2) * mask.unsqueeze(1) * (1.0 - paddle.eye(n).unsqueeze(0))


def re_loss(model: ReModel, batch: dict[str, paddle.Tensor]) -> paddle.Tensor:
    """For each real segment, cross-entropy of "which segment is my key (or none)".

    A segment with several gold keys (8% of FUNSD values) counts the probability of any of them.
    """
    logits = model(*_inputs(batch), batch["label_probs"])  # (B, N + 1, N)
    return choice_loss(logits, batch["links"], batch["mask"])


def choice_loss(logits: paddle.Tensor, links: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
    """Mean cross-entropy of each real node's choice among (N + 1, N) column logits: the nodes ``links``
    marks (any of them counts), or the last row ("none") when it marks none. RE's key, grouping's predecessor."""
    has_one = (links.sum(axis=1) > 0).astype("float32")  # (B, N)
    targets = paddle.concat([links, (1.0 - has_one).unsqueeze(1)], axis=1)  # (B, N + 1, N)
    log_p = F.log_softmax(logits, axis=1)
    picked = paddle.logsumexp(log_p + (1.0 - targets) * -1e4, axis=1)  # (B, N)
    return -(picked * mask).sum() / mask.sum().clip(min=1.0)


def _batches(examples: Sequence[Example], size: int, rng: random.Random) -> list[list[Example]]:
    order = list(examples)
    rng.shuffle(order)
    return [order[i:i + size] for i in range(0, len(order), size)]


def fit(model: paddle.nn.Layer, loss_fn: Callable[[Any, dict], paddle.Tensor], train: Sequence[Example],
        settings: TrainSettings, validate: Callable[[], float], progress: bool = True) -> History:
    """Train with AdamW and cosine decay; keeps the weights of the best validation epoch."""
    rng = random.Random(settings.seed)
    steps = settings.epochs * max(1, -(-len(train) // settings.batch_size))
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(settings.learning_rate, T_max=steps)
    optimizer = paddle.optimizer.AdamW(learning_rate=schedule, parameters=model.parameters(),
                                       weight_decay=settings.weight_decay,
                                       grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    history, best, best_state = History(), -1.0, None
    started = time.perf_counter()
    bar = tqdm(range(settings.epochs), desc=type(model).__name__, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        losses = []
        for batch_examples in _batches(train, settings.batch_size, rng):
            loss = loss_fn(model, collate(batch_examples))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            schedule.step()
            losses.append(float(loss))
        model.eval()
        score = validate()
        history.epochs.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_hmean": score})
        log.info("%s epoch %d loss %.4f val Hmean %.4f", type(model).__name__, epoch + 1, np.mean(losses), score)
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val=f"{score:.3f}")
        if score > best:
            best, best_state, history.best_epoch = score, copy.deepcopy(model.state_dict()), epoch + 1
    if best_state is not None:
        model.set_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - started
    return history


@paddle.no_grad()
def ser_logits(model: SerModel, examples: Sequence[Example]) -> list[np.ndarray]:
    """Per-document (N, labels) logits."""
    return [model(*_inputs(collate([e])))[0].numpy()[: len(e.labels)] for e in examples]


@paddle.no_grad()
def re_logits(model: ReModel, examples: Sequence[Example]) -> list[np.ndarray]:
    """Per-document (N + 1, N) logits: row i < N is "i is the key of column j", row N is "no key"."""
    out = []
    for e in examples:
        batch = collate([e])
        out.append(model(*_inputs(batch), batch["label_probs"])[0].numpy())
    return out


def re_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Column-wise softmax of (N + 1, N) logits."""
    z = logits / temperature
    z = z - z.max(axis=0, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=0, keepdims=True)


def ser_evaluate(logits: Sequence[np.ndarray], examples: Sequence[Example], labels: Sequence[str]) -> dict[str, PRF]:
    """Entity-level scores of argmax predictions against the examples' gold labels."""
    gold, predicted = [], []
    for doc_logits, e in zip(logits, examples):
        keep = e.labels != IGNORE
        gold.extend(labels[i] for i in e.labels[keep])
        predicted.extend(labels[i] for i in doc_logits.argmax(-1)[keep])
    return ser_scores(gold, predicted, labels)


def decode_links(probabilities: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(key, value, probability) for every key whose probability reaches the threshold.

    ``probabilities`` is (N + 1, N) as from :func:`re_probabilities`; the "no key" row is skipped.
    """
    keys, values = np.nonzero(probabilities[:-1] >= threshold)
    return [(int(i), int(j), float(probabilities[i, j])) for i, j in zip(keys, values)]


def re_evaluate(logits: Sequence[np.ndarray], examples: Sequence[Example], threshold: float,
                temperature: float = 1.0) -> PRF:
    """Link scores at a probability threshold."""
    gold, predicted = [], []
    for d, (doc_logits, e) in enumerate(zip(logits, examples)):
        gold.extend((f"{d}:{i}", f"{d}:{j}") for i, j in zip(*np.nonzero(e.links)))
        probabilities = re_probabilities(doc_logits, temperature)
        predicted.extend((f"{d}:{i}", f"{d}:{j}") for i, j, _ in decode_links(probabilities, threshold))
    return link_scores(gold, predicted)


def fit_temperature(nll: Callable[[float], float]) -> float:
    """Temperature minimizing held-out negative log-likelihood (a 1-D search is all it needs)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 61))
    return float(min(grid, key=nll))


def ser_temperature(logits: Sequence[np.ndarray], examples: Sequence[Example]) -> float:
    """Softmax temperature for SER probabilities, fitted on held-out documents."""
    flat = np.concatenate([l[e.labels != IGNORE] for l, e in zip(logits, examples)])
    targets = np.concatenate([e.labels[e.labels != IGNORE] for e in examples])

    def nll(t: float) -> float:
        z = flat / t
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(targets)), targets].mean())

    return fit_temperature(nll)


def re_temperature(logits: Sequence[np.ndarray], examples: Sequence[Example]) -> float:
    """Softmax temperature for link probabilities, fitted on held-out documents."""

    def nll(t: float) -> float:
        total, count = 0.0, 0
        for doc_logits, e in zip(logits, examples):
            p = re_probabilities(doc_logits, t)
            has_key = e.links.sum(axis=0) > 0
            p_true = np.where(has_key, (p[:-1] * e.links).sum(axis=0), p[-1])
            total += float(-np.log(np.clip(p_true, 1e-12, 1.0)).sum())
            count += len(p_true)
        return total / max(count, 1)

    return fit_temperature(nll)


def best_threshold(logits: Sequence[np.ndarray], examples: Sequence[Example], temperature: float) -> float:
    """Link probability threshold with the best held-out Hmean."""
    candidates = np.linspace(0.1, 0.9, 17)
    return float(max(candidates, key=lambda t: re_evaluate(logits, examples, t, temperature).hmean))


def settings_dict(settings: TrainSettings) -> dict[str, Any]:
    """Settings as plain data for model cards."""
    return asdict(settings)
