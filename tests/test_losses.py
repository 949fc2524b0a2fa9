"""Every loss honours ignore_index, counts a batch with no labelled pixel as a zero loss, adds no
host synchronization to a training step, and rejects unknown settings."""

import pytest
import pytorch_lightning as pl
import torch
from segmentation_models_pytorch import losses as smp_losses
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

from segfw.training.losses import LOSSES, build_loss
from segfw.training.module import SegmentationModule

IGNORE = 255
aten = torch.ops.aten


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_ignores_pixels_marked_ignore_index(name):
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORE
    logits = torch.randn(2, 3, 8, 8)
    changed = logits.clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 8) * 10  # only where the labels are ignored
    loss = build_loss({"name": name}, num_classes=3, ignore_index=IGNORE)
    assert torch.isfinite(loss(logits, target))
    assert loss(logits, target).item() == pytest.approx(loss(changed, target).item(), rel=1e-5)


def test_cross_entropy_class_weights_change_the_loss():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    plain = build_loss({"name": "ce"}, 3, IGNORE)(logits, target)
    weighted = build_loss({"name": "ce", "class_weights": [1.0, 5.0, 1.0]}, 3, IGNORE)
    assert weighted(logits, target).item() != pytest.approx(plain.item())


def test_unknown_loss_lists_the_choices():
    with pytest.raises(
        ValueError, match="Unknown loss.name='bce'.*ce, dice, ce_dice, focal, lovasz"
    ):
        build_loss({"name": "bce"}, 3, IGNORE)


def test_misspelled_loss_setting_is_refused_not_dropped():
    with pytest.raises(ValueError, match="loss.gama.*loss.gamma"):
        build_loss({"name": "focal", "gama": 2.0}, 3, IGNORE)


def test_class_weights_of_wrong_length_are_refused():
    with pytest.raises(ValueError, match="3 non-negative numbers"):
        build_loss({"name": "ce", "class_weights": [1.0, 2.0]}, 3, IGNORE)


# Every loss and the settings that take another path through it.
CONFIGS = [
    {"name": "ce"},
    {"name": "ce", "class_weights": [1.0, 5.0, 0.5]},
    {"name": "dice"},
    {"name": "dice", "smooth": 1.0},
    {"name": "ce_dice"},
    {"name": "ce_dice", "class_weights": [1.0, 5.0, 0.5]},
    {"name": "focal"},
    {"name": "lovasz"},
    {"name": "lovasz", "per_image": True},
]


def _labelled_batch(num_classes=3, seed=0):
    """Logits that require grad and labels with some ignored pixels, every class present."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 8, 8, generator=generator).requires_grad_()
    target = torch.randint(0, num_classes, (2, 8, 8), generator=generator)
    target[:, :2] = IGNORE
    return logits, target


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_a_batch_with_every_pixel_ignored_is_a_zero_loss_with_zero_gradients(config):
    # Before: 0 / 0 = NaN for ce, ce_dice and focal, which stopped training as a divergence, and an
    # empty tensor from Lovász.
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.full((2, 8, 8), IGNORE)
    loss = build_loss(config, num_classes=3, ignore_index=IGNORE)(logits, target)
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_an_image_with_every_pixel_ignored_leaves_the_others_loss_alone(config):
    logits, target = _labelled_batch()
    first_only = build_loss(config, 3, IGNORE)(logits[:1], target[:1])
    target[1] = IGNORE
    assert build_loss(config, 3, IGNORE)(logits, target).item() == pytest.approx(
        first_only.item(), rel=1e-5
    )


@pytest.mark.parametrize("weights", [None, [0.2, 3.0, 1.0]])
def test_cross_entropy_equals_torch_cross_entropy(weights):
    logits, target = _labelled_batch()
    ours = build_loss({"name": "ce", "class_weights": weights}, 3, IGNORE)(logits, target)
    weight = None if weights is None else torch.tensor(weights)
    reference = nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE)(logits, target)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    assert _gradient(ours, logits) == pytest.approx(
        _gradient(reference, logits), rel=1e-5, abs=1e-7
    )


@pytest.mark.parametrize("name", ["ce", "ce_dice"])
def test_labelled_pixels_all_of_weight_zero_give_no_nan(name):
    # Before: nn.CrossEntropyLoss divides by the labelled pixels' total weight, here 0.
    logits, target = _labelled_batch()
    target[target == 2] = 0  # classes 0 and 1 only, both of weight 0
    loss = build_loss({"name": name, "class_weights": [0.0, 0.0, 1.0]}, 3, IGNORE)
    value = loss(logits, target)
    dice = build_loss({"name": "dice"}, 3, IGNORE)(logits, target)
    assert value.item() == pytest.approx(0.0 if name == "ce" else dice.item(), abs=1e-7)
    value.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_focal_equals_smp_focal_loss(gamma):
    logits, target = _labelled_batch(num_classes=4)
    ours = build_loss({"name": "focal", "gamma": gamma}, 4, IGNORE)(logits, target)
    reference = smp_losses.FocalLoss("multiclass", gamma=gamma, ignore_index=IGNORE)
    reference = reference(logits, target)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    assert _gradient(ours, logits) == pytest.approx(
        _gradient(reference, logits), rel=1e-4, abs=1e-7
    )


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_dice_equals_smp_dice_loss_when_every_class_is_present(smooth):
    # With no class absent, averaging over the present classes is SMP's average over all of them:
    # the formula, smooth included, is SMP 0.6's.
    logits, target = _labelled_batch()
    ours = build_loss({"name": "dice", "smooth": smooth}, 3, IGNORE)(logits, target)
    reference = smp_losses.DiceLoss("multiclass", ignore_index=IGNORE, smooth=smooth)
    reference = reference(logits, target)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    assert _gradient(ours, logits) == pytest.approx(
        _gradient(reference, logits), rel=1e-4, abs=1e-7
    )


@pytest.mark.parametrize("name", ["dice", "ce_dice"])
def test_dice_does_not_shrink_with_the_number_of_absent_classes(name):
    # Issue 11 item 3: SMP averaged over all C classes, so 146 absent classes divided the Dice term
    # of ADE20K-sized label sets by 150 / 4.
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    target[:, 0] = IGNORE
    # The extra classes get (almost exactly) zero probability: the softmax over the first four
    # stays the same, and the labels never name them.
    wide = torch.cat([logits, torch.full((2, 146, 8, 8), -1e4)], 1)
    four = build_loss({"name": name}, 4, IGNORE)(logits, target)
    many = build_loss({"name": name}, 150, IGNORE)(wide, target)
    assert many.item() == pytest.approx(four.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("smooth", "expected"),
    [
        (0.0, ((1 - 0.7 / 1.0) + (1 - 0.6 / 0.9)) / 2),
        (1.0, ((1 - 1.7 / 2.0) + (1 - 1.6 / 1.9)) / 2),
    ],
)
def test_dice_by_hand(smooth, expected):
    # One image of three pixels labelled 0, 1 and ignored; class 2 is predicted but absent.
    probabilities = torch.tensor([[0.7, 0.3, 0.1], [0.2, 0.6, 0.1], [0.1, 0.1, 0.8]])
    logits = probabilities.log().view(1, 3, 1, 3)  # softmax gives back the probabilities
    target = torch.tensor([[[0, 1, IGNORE]]])
    # Class 0: I = 0.7, P = 0.7 + 0.3 = 1.0, T = 1; dice = (I + s) / ((P + T) / 2 + s).
    # Class 1: I = 0.6, P = 0.2 + 0.6 = 0.8, T = 1. Class 2: absent, no term; the ignored pixel
    # counts for nothing.
    loss = build_loss({"name": "dice", "smooth": smooth}, 3, IGNORE)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loss_in_bfloat16_stays_close_to_float32(config):
    # trainer.precision=bf16-true casts the loss's buffers (class weights) and the logits. Before,
    # SMP's Lovász failed there (torch.dot of float32 and bfloat16).
    torch.manual_seed(0)
    logits, target = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32))
    target[:, :4] = IGNORE
    exact = build_loss(config, 3, IGNORE)(logits, target)
    loss = build_loss(config, 3, IGNORE).to(torch.bfloat16)
    half = logits.bfloat16().requires_grad_()
    value = loss(half, target)
    value.backward()
    assert value.item() == pytest.approx(exact.item(), rel=2e-3)
    assert torch.isfinite(half.grad).all()


class _RecordHostSyncs(TorchDispatchMode):
    """Records the operators that make the host wait for a GPU: a value read back to the host, or
    an output whose size depends on the data (boolean-mask indexing, nonzero)."""

    READS = {
        aten._local_scalar_dense.default,
        aten.is_nonzero.default,
        aten.item.default,
        aten.nonzero.default,
        aten.masked_select.default,
        aten.bincount.default,
        aten._unique2.default,
    }

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func is aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1]
        )
        if func in self.READS or boolean_index:
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("config", [c for c in CONFIGS if c["name"] != "lovasz"], ids=str)
def test_loss_adds_no_host_synchronization_to_a_training_step(config):
    # Before: SMP's Dice read the largest label back (F.one_hot) and its focal loss indexed with a
    # boolean mask. Lovász-softmax sorts on the host's say-so and is left out.
    logits, target = _labelled_batch()
    loss = build_loss(config, 3, IGNORE)
    with _RecordHostSyncs() as recorder:
        loss(logits, target).backward()
    assert recorder.syncs == []


@pytest.mark.parametrize("loss", ["ce", "lovasz"])
def test_training_goes_on_through_a_batch_with_every_pixel_ignored(loss):
    # Before: the NaN loss of the all-ignored batch made the module's divergence guard stop the run.
    torch.manual_seed(0)
    module = SegmentationModule(
        model={"name": "unet", "height": 64, "width": 64},
        backbone={"name": "mobilenetv2", "weights": None},
        num_classes=3,
        class_names=["a", "b", "c"],
        loss={"name": loss},
    )
    masks = [torch.randint(0, 3, (2, 64, 64), dtype=torch.uint8), torch.full((2, 64, 64), IGNORE)]
    batches = [
        {
            "image": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8),
            "mask": mask.to(torch.uint8),
            "index": torch.arange(2 * i, 2 * i + 2),
        }
        for i, mask in enumerate(masks)
    ]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())


def _gradient(loss, logits):
    (gradient,) = torch.autograd.grad(loss, logits, retain_graph=True)
    return gradient.flatten().tolist()
