from segfw.tasks import train


def test_train_writes_metrics(train_config):
    metrics = train(train_config())
    assert 0.0 <= metrics["val/mIoU"] <= 1.0
