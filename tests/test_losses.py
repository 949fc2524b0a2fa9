"""Every loss honours ignore_index and rejects unknown settings."""

import pytest
import torch

from segfw.training.losses import LOSSES, build_loss

IGNORE = 255


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
