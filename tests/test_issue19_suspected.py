"""Issue 19 item 11, the suspected faults that were real: DataLoader workers under srun, float64
sums on MPS, checkpoints written without fsync, and one device read per cell of per_image.csv."""

from __future__ import annotations

import csv
import os
from types import SimpleNamespace

import pytest
import torch

from segfw.data import SegmentationDataModule
from segfw.data.datamodule import auto_workers
from segfw.training.metrics import MeanOverImages, per_image_scores, sum_dtype
from segfw.training.resume import AtomicCheckpointIO
from segfw.training.review import write_per_image_csv

CLASSES = ["background", "circle", "triangle", "square"]


def _datamodule(**options) -> SegmentationDataModule:
    return SegmentationDataModule(
        format="shapes", num_classes=4, class_names=CLASSES, height=32, width=32, **options
    )


@pytest.mark.parametrize(
    ("affinity", "cpus_per_task", "expected"),
    [
        (8, "8", 7),  # srun: each of the 4 tasks bound to its own 8 CPUs (was 8 // 4 - 1 = 1)
        (32, "8", 7),  # sbatch's step holds the node's 32; Lightning starts the 4 processes
        (32, None, 7),  # no SLURM: the 4 processes share the machine's 32
        (8, None, 1),
    ],
)
def test_auto_workers_divide_only_a_shared_cpu_set(monkeypatch, affinity, cpus_per_task, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    if cpus_per_task is None:
        monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    else:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", cpus_per_task)
    datamodule = _datamodule(num_workers="auto")
    datamodule.trainer = SimpleNamespace(num_devices=4)  # type: ignore[assignment]
    assert datamodule.workers() == expected
    assert auto_workers(64, 1, None) == 8  # at most MAX_AUTO_WORKERS


def test_sums_are_float32_on_mps_and_half_values_are_summed_in_float32():
    """MPS has no float64: the evaluation loss's float64 sum failed to move there. The choice
    is by device type (no MPS here to move to); a float32 sum of float16 losses stays exact where
    a float16 one stops at 2048."""
    assert sum_dtype("mps") == torch.float32
    assert sum_dtype("cuda") == sum_dtype("cpu") == torch.float64
    metric = MeanOverImages().to("cpu")
    assert metric.total.dtype == torch.float64
    metric.set_sum_dtype(sum_dtype("mps"))
    losses = torch.ones(1000, dtype=torch.float16)
    for _ in range(5):
        metric.update(losses, torch.ones(1000, dtype=torch.bool))
    assert metric.total.dtype == torch.float32 and metric.total.item() == 5000.0
    assert metric.compute().item() == 1.0
    metric.reset()  # the reset value keeps the device's dtype
    assert metric.total.dtype == torch.float32 and metric.total.item() == 0.0


def test_checkpoints_are_synced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    """A rename that reaches the disk before the data leaves an empty last.ckpt after a crash of
    the machine: nothing was fsynced."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(source, target) -> None:
        events.append(("replace", str(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    partial = target.with_name(f".partial-checkpoint-{os.getpid()}")
    assert events == [
        ("fsync", str(partial)),
        ("replace", str(target)),
        ("fsync", str(target.parent)),
    ]
    assert torch.load(target)["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]


def test_per_image_csv_reads_each_column_at_once(tmp_path, monkeypatch):
    """Each cell was float(tensor): on a GPU, one wait for the device per cell (6 per image
    here, 300 in all); each score column is now read with one tolist()."""
    generator = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 50, (50, 3, 4), generator=generator)
    counts[:, 2] = torch.minimum(counts[:, 2], torch.minimum(counts[:, 0], counts[:, 1]))
    counts[7] = 0  # an image without a labelled pixel: empty cells
    indices = torch.arange(100, 150)
    source = SimpleNamespace(image_path=lambda index: f"images/{index}.png")
    datamodule = SimpleNamespace(
        dataset=lambda stage: SimpleNamespace(source=source), splits={"test": "test"}
    )
    reads: list[str] = []
    for name in ("item", "tolist", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original):
            reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    path = tmp_path / "per_image.csv"
    write_per_image_csv(path, {"test": (indices, counts)}, datamodule, CLASSES)  # type: ignore[arg-type]
    monkeypatch.undo()
    assert reads.count("tolist") == 4 and "item" not in reads and "__float__" not in reads

    rows = list(csv.DictReader(path.open()))
    scores = per_image_scores(counts)
    assert len(rows) == 50 and rows[0]["path"] == "images/100.png"
    for row, accuracy, mean_iou, ious in zip(
        rows, scores["pixel_acc"], scores["mIoU"], scores["IoU"], strict=True
    ):
        for cell, value in [(row["pixel_acc"], accuracy), (row["mIoU"], mean_iou)] + [
            (row[f"IoU/{c}"], v) for c, v in zip(CLASSES, ious, strict=True)
        ]:
            assert cell == ("" if value.isnan() else f"{value.item():.6f}")
    assert rows[7]["mIoU"] == rows[7]["pixel_acc"] == ""
