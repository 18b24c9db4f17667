"""How the pruning fine-tunes train: `FinetuneRecipe`, S4oP's published one and guided's own.

`FinetuneRecipe.published_s4op(dataset)` is PARCO-LAB/S4oP's fine-tune (`pruning_config.py`,
`fine_tuning.py`, `model/utils.py` `setup_optimizer`, `model/train.py` `run`, `s4op.py`): AdamW at
lr 1e-4 (IMDb 1e-5) and weight decay 1e-5, the SSM parameters (log_dt, log_A_real, A_imag) in their
own group at weight decay 0 and the same lr (the layer registers them without an lr of its own);
linear warm-up from 1% of the lr over max(1, min(5, epochs // 10)) epochs, then a cosine over the
remaining epochs, stepped once per epoch; gradient norm clipped at 1.0; early stopping once patience + 1
epochs in a row bring no strictly better validation accuracy (ties keep the earlier epoch), the best
epoch reloaded; BatchNorm statistics carried over from the parent model (updated by the fine-tune's
own batches, never re-estimated); no augmentation; the candidate with the strictly best validation
accuracy kept (ties: the first seed); seeds 7, 42, 123, 2024, 31650.

Epochs and patience come from the S4D rows of the reference's table. Our datasets map onto them:
listops -> ListOps; smnist and digits -> Image (digits are 8x8 handwritten digits read pixel by pixel,
a small sMNIST); the UCR/UEA sets (gunpoint, arrowhead, basicmotions) and anything else -> ECG, the
reference's only row of real-valued sensor time series read through a linear encoder, as ours are.
Its long patience (6 of 20 epochs) also suits their ~10-sequence validation splits, whose accuracy
moves in steps of 10% and often stalls for a few epochs.

`FinetuneRecipe.guided(...)` is our controller's own fine-tune: a tenth of the training lr, weight
decay 0.01, the SSM group's lr capped at train.SSM_LR, a cosine per batch without warm-up or clipping,
no early stopping (GUIDED_PATIENCE: the fine-tune runs its epochs, then the best validation epoch is
reloaded; equal accuracy: the lower validation loss is better), BatchNorm re-estimated before every
fine-tune, the training's augmentation, and distillation from the unpruned model (GUIDED_DISTILL,
train.distillation_loss).
"""

from dataclasses import asdict, dataclass, replace

from ..core.errors import UserError
from ..train import SSM_LR

PUBLISHED_SEEDS = (7, 42, 123, 2024, 31650)
PUBLISHED_RATES = (0.1, 0.3, 0.5, 0.7, 0.9)
PUBLISHED_WEIGHT_DECAY = 1e-5
PUBLISHED_GRAD_CLIP = 1.0
# S4D rows of the reference's pruning_config.py: epochs, patience (early_stopping), lr
PUBLISHED_ROWS = {"listops": (5, 2, 1e-4), "pathfinder": (20, 6, 1e-4), "imdb": (4, 1, 1e-5), "ecg": (20, 6, 1e-4),
                  "image": (20, 2, 1e-4), "retrieval": (4, 1, 1e-4)}
ROW_OF = {"listops": "listops", "smnist": "image", "digits": "image", "gunpoint": "ecg", "arrowhead": "ecg",
          "basicmotions": "ecg"}
DEFAULT_ROW = "ecg"  # datasets the table lacks (see the module docstring)

GUIDED_EPOCHS, GUIDED_SEEDS = 5, 5
# No early stopping: a pruned model needs the whole budget to recover (NetAdapt's long-term fine-tune).
# With a patience of 2 on validation splits of ~10 sequences, saturated at 1.0 from the first epoch, the
# fine-tune of a rate stopped after 5-14 of its 25 epochs; measured on bench_prune's 2x point, digits'
# model went from 1.8 selection points below the unpruned one (rejected) to 2.7 above, gunpoint's from
# 2.67 test points lost to 0.67.
GUIDED_PATIENCE = None
GUIDED_LR_FACTOR = 0.1  # guided's fine-tunes start at a tenth of the training learning rate
GUIDED_WEIGHT_DECAY = 0.01
# Guided's fine-tunes learn half from the labels, half from the unpruned model's soft targets: measured
# on gunpoint's main job (32/32/2), the 2x model kept 0.980 test accuracy with it, 0.967 without.
GUIDED_DISTILL = 0.5
CANDIDATE_TIES = ("first", "val_loss")
BN_STATS = ("carried", "re-estimated")


def published_row(dataset):
    """The row of the reference's table that `dataset` (a registry name, or None) follows."""
    key = (dataset or "").lower()
    return key if key in PUBLISHED_ROWS else ROW_OF.get(key, DEFAULT_ROW)


def published_warmup(epochs):
    return max(1, min(5, epochs // 10))


def published_seeds(count=None):
    """`count` seeds (None: all five): the published ones first, then 1, 2, ... beyond five."""
    if count is None:
        return PUBLISHED_SEEDS
    return PUBLISHED_SEEDS[:count] + tuple(range(1, count - len(PUBLISHED_SEEDS) + 1))


def as_seeds(seeds, default):
    """seeds: None (the default tuple), a count (default's generator) or the seeds themselves."""
    if seeds is None or isinstance(seeds, int):
        return default(seeds)
    return tuple(seeds)


@dataclass(frozen=True)
class FinetuneRecipe:
    """Everything a candidate's fine-tune does; `fit_options()` is what `train.fit` gets."""

    lr: float
    epochs: int
    patience: int  # None: no early stopping
    seeds: tuple  # s4op: one candidate per seed; both: the budget per rate is len(seeds) x epochs
    batch_size: int
    weight_decay: float
    ssm_weight_decay: float = 0.0
    ssm_lr: float = SSM_LR  # cap on the SSM group's lr; None: the same lr as the rest
    warmup_epochs: int = 0
    lr_step: str = "batch"  # train.LR_STEPS
    grad_clip: float = None
    stop_rule: str = "patience"  # train.STOP_RULES
    epoch_ties: str = "val_loss"  # train.EPOCH_TIES
    candidate_ties: str = "val_loss"  # CANDIDATE_TIES
    bn_stats: str = "re-estimated"  # BN_STATS
    augment: tuple = ()
    distill: float = 0.0  # weight of the unpruned model's soft targets (train.distillation_loss); 0: labels only
    source: str = ""
    overrides: tuple = ()  # the command-line flags that replaced a default

    def __post_init__(self):
        if self.candidate_ties not in CANDIDATE_TIES or self.bn_stats not in BN_STATS:
            raise ValueError(f"candidate ties {self.candidate_ties!r} / bn stats {self.bn_stats!r}")

    @classmethod
    def published_s4op(cls, dataset, batch_size, epochs=None, patience=None, lr=None, seeds=None):
        """S4oP's fine-tune for `dataset` (a registry name, or None); a given argument overrides the
        published value (the warm-up follows the epochs, as in the reference). seeds: a count (the
        first of the published ones) or the seeds."""
        row = published_row(dataset)
        row_epochs, row_patience, row_lr = PUBLISHED_ROWS[row]
        epochs = row_epochs if epochs is None else epochs
        return cls(lr=row_lr if lr is None else lr, epochs=epochs, patience=row_patience if patience is None else patience,
                   seeds=as_seeds(seeds, published_seeds), batch_size=batch_size,
                   weight_decay=PUBLISHED_WEIGHT_DECAY, ssm_lr=None, warmup_epochs=published_warmup(epochs),
                   lr_step="epoch", grad_clip=PUBLISHED_GRAD_CLIP, stop_rule="patience+1", epoch_ties="earlier",
                   candidate_ties="first", bn_stats="carried", augment=(),
                   source=f"S4oP published (PARCO-LAB/S4oP), S4D row {row!r}")

    @classmethod
    def guided(cls, train_lr, batch_size, augment=(), seed=0, epochs=None, patience=None, lr=None, seeds=None):
        """The guided controller's own fine-tune (training's lr / 10, ...); arguments override. seeds: a
        count (seed, seed + 1, ...; only their number matters: the budget) or the seeds (the first one
        seeds the fine-tunes)."""
        return cls(lr=train_lr * GUIDED_LR_FACTOR if lr is None else lr,
                   epochs=GUIDED_EPOCHS if epochs is None else epochs,
                   patience=GUIDED_PATIENCE if patience is None else patience,
                   seeds=as_seeds(seeds, lambda n: tuple(range(seed, seed + (n or GUIDED_SEEDS)))),
                   batch_size=batch_size,
                   weight_decay=GUIDED_WEIGHT_DECAY, augment=tuple(augment), distill=GUIDED_DISTILL,
                   source="guided (s4op-micro)")

    def with_overrides(self, flags):
        return replace(self, overrides=tuple(flags))

    def fit_options(self):
        """Keyword arguments of train.fit."""
        return dict(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, weight_decay=self.weight_decay,
                    patience=self.patience, augment_with=self.augment, ssm_lr=self.ssm_lr,
                    ssm_weight_decay=self.ssm_weight_decay, warmup_epochs=self.warmup_epochs, lr_step=self.lr_step,
                    grad_clip=self.grad_clip, stop_rule=self.stop_rule, epoch_ties=self.epoch_ties,
                    distill=self.distill)

    def best_candidate(self, vals):
        """Index of the candidate kept among validation (accuracy, loss) pairs, in seed order."""
        if self.candidate_ties == "first":
            return max(range(len(vals)), key=lambda k: (vals[k][0], -k))
        return max(range(len(vals)), key=lambda k: (vals[k][0], -vals[k][1], -k))

    def as_record(self):
        """pareto.json's "finetune" entry of a strategy."""
        record = {k: v for k, v in asdict(self).items() if k in (
            "lr", "weight_decay", "ssm_weight_decay", "warmup_epochs", "grad_clip", "patience", "epochs",
            "batch_size", "bn_stats", "distill", "source")}
        return {**record, "ssm_lr": self.lr if self.ssm_lr is None else min(self.lr, self.ssm_lr),
                "schedule": self.schedule_text(), "augment": list(self.augment),
                "early_stopping": self.early_stopping_text(), "tie_break": self.tie_break_text(),
                "seeds": list(self.seeds), "overrides": list(self.overrides)}

    def schedule_text(self):
        if self.lr_step == "epoch":
            return (f"linear warm-up from 1% of the lr over {self.warmup_epochs} epoch(s), then cosine; "
                    "stepped per epoch")
        return "cosine over all batches, no warm-up; stepped per batch"

    def early_stopping_text(self):
        if self.patience is None:
            return "none; the best epoch is reloaded"
        after = "patience + 1" if self.stop_rule == "patience+1" else "patience"
        ties = ("strictly better val accuracy (ties keep the earlier epoch)" if self.epoch_ties == "earlier"
                else "better val accuracy (equal accuracy: the lower val loss is better)")
        return f"stop after {after} epochs without a {ties}; the best epoch is reloaded"

    def tie_break_text(self):
        if self.candidate_ties == "first":
            return "the strictly best val accuracy is kept; ties: the first seed"
        return "the best val accuracy is kept; ties: the lower val loss, then the first seed"


def parse_seeds(text):
    """--seeds: a count ("3") or the seeds themselves ("7,42", "7,")."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise UserError(f"--seeds {text!r}: give a count (e.g. 3) or comma-separated integer seeds (e.g. 7,42)")
    if "," not in str(text):
        if values[0] < 1:
            raise UserError("--seeds must be at least 1")
        return values[0]
    if len(set(values)) != len(values):
        raise UserError(f"--seeds {text!r}: the seeds must differ")
    return tuple(values)
