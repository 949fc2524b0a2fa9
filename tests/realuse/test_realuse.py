"""The real-use suite: every dataset layout at its real image shapes, trained, validated, scored
and predicted through the user's commands with every default on (issue 11).

The default run trains each dataset once and each architecture config at least once (the
embedded dataset, scored at the model's input size, takes the five architectures whose
networks are costly on whole images, in one ``train.py -m`` sweep); the other combinations of the
matrix are marked ``slow``. The runs are shared by the tests of this module.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from realuse_layouts import CITYSCAPES_IDS, DATASETS, Layout
from realuse_runs import (
    ARCHITECTURES,
    MODEL_SIZES,
    Result,
    Run,
    command,
    image_size,
    model_overrides,
    per_image_rows,
    strip_size,
    tensorboard_images,
)

import segfw
from segfw.commands.api import evaluate
from segfw.data import SegmentationDataModule
from segfw.data.files import read_image
from segfw.training.metrics import ConfusionMatrix, scores_from_confusion
from segfw.training.module import SegmentationModule

# The shapes sweep: the config group of each architecture, whose defaults make it.
SWEPT = {
    "deeplabv3plus-os8": "deeplabv3plus",
    "pspnet": "pspnet",
    "unet": "unet",
    "segnet-3": "segnet",
    "unetpp-deep-supervision": "unetpp",
}
# The other architectures, each on a dataset scored on whole images at their own size; sizes that
# are no multiple of the network's divisor on purpose (CamVid's 360 rows with a divisor of 16,
# VOC's 375, ADE20K's 683 with 32).
SINGLE = [
    ("voc", "deeplabv3plus-os16"),
    ("ade20k", "segnet-5"),
    ("camvid", "segnet-4"),
    ("cityscapes", "segnet-2"),
    ("folder", "unetpp"),
]
DEFAULT = SINGLE + [("shapes", architecture) for architecture in SWEPT]
SLOW = [
    (dataset, architecture)
    for dataset in DATASETS
    for architecture in ARCHITECTURES
    if (dataset, architecture) not in DEFAULT
]
# ValidationSamples' default number of pictures (segfw/conf/callbacks/default.yaml).
SAMPLES = 8
# The scores that must not depend on how evaluation batches images.
SCORES = ("val/mIoU", "val/loss")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> Callable[[str], Layout]:
    """``layouts(name)``: the dataset written once, on first use."""
    written: dict[str, Layout] = {}

    def get(name: str) -> Layout:
        if name not in written:
            written[name] = DATASETS[name](tmp_path_factory.mktemp(name))
        return written[name]

    return get


class Runs:
    """Trains and evaluates dataset x architecture combinations, each once per session."""

    def __init__(self, base: Path, layouts: Callable[[str], Layout]) -> None:
        self.base = base
        self.layouts = layouts
        self.trained: dict[tuple[str, str], Run] = {}

    def train(self, dataset: str, architecture: str) -> Run:
        """``python train.py data=<dataset> <architecture> trainer.max_epochs=1``."""
        key = (dataset, architecture)
        if key not in self.trained:
            directory = self.base / f"{dataset}-{architecture}"
            result = command(
                "train.py",
                *self.layouts(dataset).overrides,
                *model_overrides(architecture),
                "trainer.max_epochs=1",
                f"hydra.run.dir={directory}",
            )
            self.trained[key] = Run(dataset, architecture, directory, result)
        return self.trained[key]

    def sweep(self, dataset: str, architectures: dict[str, str]) -> list[Run]:
        """One ``python train.py -m model=a,b,...`` sweep over architecture config groups, each
        at its defaults, at one model size that all of them take."""
        directory = self.base / f"{dataset}-sweep"
        height, width = MODEL_SIZES[32]
        result = command(
            "train.py",
            "-m",
            *self.layouts(dataset).overrides,
            f"model={','.join(architectures.values())}",
            "backbone=mobilenetv2",
            "backbone.weights=null",
            f"model.height={height}",
            f"model.width={width}",
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={directory}",
        )
        runs = [
            Run(dataset, architecture, directory / str(job), result)
            for job, architecture in enumerate(architectures)
        ]
        self.trained |= {(run.dataset, run.architecture): run for run in runs}
        return runs

    def evaluate(self, runs: list[Run]) -> None:
        """``python evaluate.py ckpt_path=<best> split=val`` for each run that trained (one
        ``-m`` sweep over their checkpoints when there are several: one interpreter start)."""
        runs = [run for run in runs if run.train.returncode == 0]
        if not runs:
            return
        paths = ",".join(f"'{run.best_checkpoint}'" for run in runs)
        directory = self.base / f"evaluate-{len(list(self.base.glob('evaluate-*')))}"
        sweep = ["-m", f"hydra.sweep.dir={directory}"] if len(runs) > 1 else []
        where = [] if sweep else [f"hydra.run.dir={directory}"]
        result = command("evaluate.py", *sweep, f"ckpt_path={paths}", "split=val", *where)
        for job, run in enumerate(runs):
            run.evaluation = result
            output = directory / str(job) if sweep else directory
            if (output / "metrics.json").is_file():
                run.evaluation_metrics = json.loads((output / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, layouts) -> Runs:
    return Runs(tmp_path_factory.mktemp("runs"), layouts)


@pytest.fixture(scope="module")
def default_runs(runs: Runs) -> dict[tuple[str, str], Run]:
    """The default suite's runs, trained and their best checkpoints evaluated."""
    trained = [runs.train(*key) for key in SINGLE] + runs.sweep("shapes", SWEPT)
    runs.evaluate(trained)
    return {(run.dataset, run.architecture): run for run in trained}


def check_run(run: Run, layout: Layout) -> None:
    """What every run must show: it ended well, drew its validation pictures at each sample's
    own size, wrote its metrics and per-image scores, and evaluate.py reproduces them."""
    assert run.train.returncode == 0, run.train.explain()
    config = run.config
    for override in ARCHITECTURES[run.architecture][0]:
        key, value = override.split("=")
        if key == "model":
            assert config["model"]["name"] == value
        else:  # the architecture argument the run was meant to have, set or by default
            assert str(config["model"][key.removeprefix("model.")]).lower() == value
    checkpoints = {path.name for path in (run.directory / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and run.best_checkpoint.is_file()

    metrics = run.metrics
    assert 0 <= metrics["val/mIoU"] <= 1
    rows = per_image_rows(run.directory, layout.val_split)
    assert sorted(int(row["index"]) for row in rows) == list(range(layout.val_count))

    pictures = tensorboard_images(run.directory)
    samples = {tag: p for tag, p in pictures.items() if tag.startswith("val/samples/")}
    assert len(samples) == min(SAMPLES, layout.val_count), sorted(pictures)
    assert len(pictures["val/confusion_matrix"]) == 1  # one validation epoch, sanity check aside
    paths = {int(row["index"]): Path(row["path"]) for row in rows}
    for tag, drawn in samples.items():
        assert len(drawn) == 1, tag
        if layout.whole:  # each image at its own size and aspect, as validation scored it
            size = image_size(paths[int(tag.rsplit("/", 1)[1])])
        else:  # shrunk to fit the model's input size and padded there
            size = (config["model"]["height"], config["model"]["width"])
        assert drawn[0].shape[:2] == strip_size(size), tag

    assert run.evaluation is not None and run.evaluation.returncode == 0, run.evaluation.explain()
    assert abs(run.evaluation_metrics["val/mIoU"] - metrics["val/mIoU"]) < 1e-6


@pytest.mark.parametrize(("dataset", "architecture"), DEFAULT)
def test_trains_validates_and_scores(default_runs, layouts, record_property, dataset, architecture):
    run = default_runs[dataset, architecture]
    record_times(run, record_property)
    check_run(run, layouts(dataset))


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "architecture"), SLOW)
def test_trains_validates_and_scores_everywhere(
    runs, layouts, record_property, dataset, architecture
):
    run = runs.train(dataset, architecture)
    runs.evaluate([run])
    record_times(run, record_property)
    check_run(run, layouts(dataset))


def record_times(run: Run, record_property) -> None:
    """The wall times of the run's commands, for the JUnit report (``--junitxml``); a sweep's
    time is that of all its jobs."""
    record_property("train_seconds", round(run.train.seconds))
    if run.evaluation is not None:
        record_property("evaluate_seconds", round(run.evaluation.seconds))


def test_a_folder_dataset_without_class_names_names_them(default_runs):
    run = default_runs["folder", "unetpp"]
    assert "naming the classes class_0 .. class_2" in (run.directory / "train.log").read_text()
    assert {"val/IoU/class_0", "val/IoU/class_2"} <= set(run.metrics)


def test_evaluate_does_not_announce_a_random_encoder(default_runs):
    """It loads trained weights: "random initialization" would be a false alarm (issue 11)."""
    evaluation = default_runs["voc", "deeplabv3plus-os16"].evaluation
    assert evaluation is not None and evaluation.returncode == 0, evaluation.explain()
    assert "random initialization" not in evaluation.output


def val_scores(module: SegmentationModule, samples: list[dict], batches: list[list[int]]):
    """val/mIoU and val/loss of ``module`` over ``samples`` (the dataset's, at their own size) in
    ``batches`` (lists of positions), each batch padded at the bottom and right to its largest
    image, rounded up to the network's divisor, with black pixels: as whole-image validation
    batched images before issue 11. The loss is the mean of each labelled image's own loss."""
    confusion = ConfusionMatrix(module.hparams.num_classes, module.hparams.ignore_index)
    losses = []
    divisor = module.net.input_divisor
    for batch in batches:
        images = [samples[p]["image"] for p in batch]
        height = math.ceil(max(x.shape[1] for x in images) / divisor) * divisor
        width = math.ceil(max(x.shape[2] for x in images) / divisor) * divisor
        canvas = torch.zeros((len(batch), 3, height, width), dtype=torch.uint8)
        for row, image in enumerate(images):
            canvas[row, :, : image.shape[1], : image.shape[2]] = image
        with torch.no_grad():
            logits = module(canvas)
        for row, position in enumerate(batch):
            target = samples[position]["mask"].long()[None]
            own = logits[row : row + 1, :, : target.shape[1], : target.shape[2]]
            confusion.update(own.argmax(1), target)
            if (target != module.hparams.ignore_index).any():
                losses.append(module.criterion(own, target).item())
    scores = scores_from_confusion(confusion.compute(), module.hparams.class_names)
    return {"val/mIoU": scores["mIoU"], "val/loss": sum(losses) / len(losses)}


@pytest.mark.parametrize(
    ("dataset", "architecture"),
    [
        ("voc", "deeplabv3plus-os16"),
        pytest.param("voc", "pspnet", marks=pytest.mark.slow),
        pytest.param("ade20k", "deeplabv3plus-os8", marks=pytest.mark.slow),
        pytest.param("ade20k", "pspnet", marks=pytest.mark.slow),
    ],
)
def test_scores_do_not_depend_on_the_evaluation_batch_size(
    runs, layouts, tmp_path, dataset, architecture
):
    """Global pooling (ASPP's image pooling, PSPNet's pyramid) over whole images of several
    sizes in both orientations: the scores must not change with data.eval_batch_size."""
    run = runs.train(dataset, architecture)
    assert run.train.returncode == 0, run.train.explain()
    layout = layouts(dataset)
    metrics = {
        size: evaluate(
            run.best_checkpoint,
            "val",
            [*layout.overrides, f"data.eval_batch_size={size}"],
            tmp_path / f"batch{size}",
        )
        for size in (1, 4)
    }
    for key in SCORES:
        assert abs(metrics[1][key] - metrics[4][key]) < 1e-6, (key, metrics[1], metrics[4])

    # The check can fail: batched as validation batched them before (the three images in one
    # batch of 4, each padded to the largest), the same checkpoint scores otherwise than with one
    # image per batch (which gives the same scores before and now).
    checkpoint = torch.load(run.best_checkpoint, weights_only=True)
    data = SegmentationDataModule(**checkpoint["datamodule_hyper_parameters"]).dataset("val")
    samples = [data[i] for i in range(len(data))]
    sizes = [tuple(sample["mask"].shape) for sample in samples]
    assert {height > width for height, width in sizes} == {True, False}  # both orientations
    module = SegmentationModule.from_checkpoint(checkpoint)
    alone = val_scores(module, samples, [[p] for p in range(len(samples))])
    padded = val_scores(module, samples, [list(range(len(samples)))])
    batched = {size: {key: metrics[size][key] for key in SCORES} for size in metrics}
    # The figures, for a run with -s.
    print(f"{dataset}/{architecture}: eval_batch_size 1 and 4 {batched}; padded together {padded}")
    assert any(abs(padded[key] - alone[key]) > 1e-6 for key in SCORES), (alone, padded)


def test_predict_predicts_as_validation_did(default_runs, layouts, tmp_path):
    """CamVid validates whole 360 x 480 frames (360: no multiple of SegNet-4's 16): predict.py's
    default masks are the module's whole-image argmax at full size, and segfw.load's too."""
    run = default_runs["camvid", "segnet-4"]
    layout = layouts("camvid")
    checkpoint = run.best_checkpoint
    images = layout.val_images
    result = predict(checkpoint, images[0].parent, tmp_path)
    assert result.returncode == 0, result.explain()
    assert "random initialization" not in result.output

    # The frames in one batch, as predict.py batches them: a batched convolution may round
    # differently from an unbatched one, and flip a pixel whose two best classes tie.
    pixels = torch.stack([torch.from_numpy(read_image(p)).permute(2, 0, 1) for p in images])
    with torch.no_grad():
        expected = SegmentationModule.from_checkpoint(checkpoint)(pixels).argmax(1).numpy()
    written = [np.asarray(Image.open(tmp_path / "masks" / path.name)) for path in images]
    for path, mask, whole in zip(images, written, expected, strict=True):
        assert mask.shape == (360, 480)
        np.testing.assert_array_equal(mask, whole, err_msg=path.name)
    with torch.no_grad():  # where inference code often loads a model
        loaded = segfw.load(checkpoint).predict([str(path) for path in images])
    for mask, on_disk in zip(loaded, written, strict=True):
        np.testing.assert_array_equal(mask, on_disk)


def predict(checkpoint: Path, images: Path, output: Path) -> Result:
    """``python predict.py`` at its defaults."""
    return command(
        "predict.py",
        f"ckpt_path={checkpoint}",
        f"input={images}",
        f"output={output}",
        f"hydra.run.dir={output / 'hydra'}",
    )


def test_scores_equal_the_official_cityscapes_evaluation(default_runs, layouts, tmp_path):
    """evaluate.py's per-class IoU and mIoU at full 2048 x 1024 resolution equal those of
    cityscapesScripts' evalPixelLevelSemanticLabeling on the masks predict.py writes."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    from cityscapesscripts.helpers.labels import trainId2label

    run = default_runs["cityscapes", "segnet-2"]
    assert run.evaluation is not None and run.evaluation.returncode == 0
    layout = layouts("cityscapes")
    images = layout.val_images[0].parents[1]  # leftImg8bit/val, its city folders inside
    result = predict(run.best_checkpoint, images, tmp_path / "predicted")
    assert result.returncode == 0, result.explain()

    # predict.py writes train ids (class indices); the official script reads label ids, mapped
    # with its own table.
    label_ids = np.zeros(256, np.uint8)
    for train_id in range(19):
        label_ids[train_id] = trainId2label[train_id].id
    predictions, truths = [], []
    for path in layout.val_images:
        city = path.parent.name
        stem = path.name.removesuffix("_leftImg8bit.png")
        mask = np.asarray(Image.open(tmp_path / "predicted" / "masks" / city / path.name))
        assert mask.shape == (1024, 2048)
        predictions.append(str(tmp_path / f"{stem}_pred.png"))
        Image.fromarray(label_ids[mask]).save(predictions[-1])
        root = path.parents[3]
        truths.append(str(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"))

    args = copy.copy(official.args)
    args.quiet = True
    args.exportFile = str(tmp_path / "official.json")
    # Instance-level scores (nIoU) need *_instanceIds.png files, and their code calls np.in1d,
    # which NumPy 2.4 removed; the pixel-level IoU compared here does not depend on them.
    args.evalInstLevelScore = False
    scores = official.evaluateImgLists(predictions, truths, args)

    ours = run.evaluation_metrics
    compared = 0
    for train_id, name in enumerate(run.config["data"]["class_names"]):
        theirs = scores["classScores"][trainId2label[train_id].name]
        mine = ours[f"val/IoU/{name}"]
        if math.isnan(theirs):
            assert mine is None, name  # no pixel in labels or predictions: no score
        else:
            assert abs(mine - theirs) < 1e-6, (name, mine, theirs)
            compared += 1
    assert compared >= len(set(CITYSCAPES_IDS.values()) - {255})  # every class the labels hold
    assert abs(ours["val/mIoU"] - scores["averageScoreClasses"]) < 1e-6
