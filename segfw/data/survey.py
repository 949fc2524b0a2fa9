"""A dataset's survey, for ``python -m segfw.data.inspect data=voc data.root=/data/VOC2012``.

Decodes every image and mask of every configured split and reports, per split: the sample count, image sizes, each class's share of the labelled pixels and the number of
images it occurs in, the share of ignored pixels, and every problem (missing pairs, unreadable
files, size mismatches, masks in the wrong format, unknown label values), one line per file, with
the messages training would stop with. Writes into the output directory ``report.json``
and ``preview_<split>.png`` (images beside their masks painted in the class palette).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segfw.data.check import scan
from segfw.data.datamodule import SegmentationDataModule
from segfw.data.dataset import SampleSource
from segfw.data.files import FilePairs
from segfw.data.preview import grid
from segfw.data.problems import KINDS, Problem
from segfw.errors import ConfigError, DataError
from segfw.visualize import default_palette

STAGES = ("train", "val", "test")


def survey(
    datamodule: SegmentationDataModule, output_dir: Path, preview_images: int = 16
) -> dict[str, Any]:
    """Scans every configured split of ``datamodule``; writes the report and previews.

    Returns:
        The report: per stage, the split name, sample count, sizes, class statistics, problems
        and the preview's path (also written to ``<output_dir>/report.json``).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"format": datamodule.hparams["format"], "splits": {}}
    for stage in STAGES:
        if datamodule.has_split(stage):
            report["splits"][stage] = _inspect_split(datamodule, stage, output_dir, preview_images)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _inspect_split(
    datamodule: SegmentationDataModule, stage: str, output_dir: Path, preview_images: int
) -> dict[str, Any]:
    hp = datamodule.hparams
    split = datamodule.splits[stage]
    entry: dict[str, Any] = {"split": split}
    try:
        source = datamodule.source(stage)
    except ConfigError as error:  # a missing folder or an empty split: nothing to scan
        entry["problems"] = [{"kind": "layout", "message": str(error)}]
        return entry
    label = f"the {split} split"
    result = scan(source, hp["num_classes"], hp["ignore_index"], True, datamodule.workers(), label)
    listed = source.problems if isinstance(source, FilePairs) else []
    problems = [*listed, *result.problems]
    labelled = max(1, int(result.class_pixels.sum()))
    entry |= {
        "samples": len(source),
        "min_size": result.min_size,
        "max_size": result.max_size,
        "class_pixels": dict(zip(hp["class_names"], result.class_pixels.tolist(), strict=True)),
        "class_share": {
            name: round(int(n) / labelled, 6)
            for name, n in zip(hp["class_names"], result.class_pixels, strict=True)
        },
        "class_images": dict(zip(hp["class_names"], result.class_images.tolist(), strict=True)),
        "ignored_pixels": result.ignored_pixels,
        "problems": [{"kind": p.kind, "message": p.message} for p in problems],
    }
    bad = {p.message for p in problems}
    preview = _preview(datamodule, source, bad, preview_images)
    if preview is not None:
        path = output_dir / f"preview_{stage}.png"
        cv2.imwrite(str(path), cv2.cvtColor(preview, cv2.COLOR_RGB2BGR))
        entry["preview"] = str(path)
    return entry


def _preview(
    datamodule: SegmentationDataModule, source: SampleSource, bad: set[str], count: int
) -> np.ndarray | None:
    """A grid of ``count`` samples spread evenly through the split, skipping broken ones."""
    if len(source) == 0:  # every file unpaired
        return None
    hp = datamodule.hparams
    # Without a dataset palette, the VOC colours from index 1 on: class 0 would paint black over
    # the image.
    palette = np.array(
        hp["palette"] if hp["palette"] is not None else default_palette(hp["num_classes"] + 1)[1:]
    )
    samples = []
    for index in np.unique(np.linspace(0, len(source) - 1, count).round().astype(int)):
        try:
            image, mask = source.load(int(index))
        except DataError as error:
            if str(error) in bad:  # reported already
                continue
            raise
        samples.append((image, mask, Path(source.name(int(index))).name))
    if not samples:
        return None
    return grid(samples, palette, hp["class_names"], hp["ignore_index"])


def format_report(report: dict[str, Any], class_names: list[str]) -> str:
    """The report as text: a block per split, the classes by share, the problems by kind."""
    lines = []
    for stage, entry in report["splits"].items():
        if "samples" not in entry:
            lines += [f"{stage} split ({entry['split']}): cannot be read", ""]
            lines += [f"  [{p['kind']}] {p['message']}" for p in entry["problems"]]
            continue
        sizes = entry["min_size"], entry["max_size"]
        lines.append(
            f"{stage} split ({entry['split']}): {entry['samples']} samples, height x width "
            f"from {_size(sizes[0])} to {_size(sizes[1])}"
        )
        total = sum(entry["class_pixels"].values()) + entry["ignored_pixels"]
        lines.append(f"  {'class':<24}{'share':>8}{'images':>8}")
        for name in sorted(class_names, key=lambda n: -entry["class_share"][n]):
            share = entry["class_share"][name]
            lines.append(f"  {name:<24}{share:>8.2%}{entry['class_images'][name]:>8}")
        ignored = entry["ignored_pixels"] / max(1, total)
        lines.append(f"  ignored pixels: {ignored:.2%} (shares above are of labelled pixels)")
        never = [n for n in class_names if entry["class_images"][n] == 0]
        if never:
            lines.append(f"  never labelled in this split: {', '.join(never)}")
        problems = [Problem(**p) for p in entry["problems"]]
        lines.append(f"  problems: {len(problems) or 'none'}")
        for kind in KINDS:
            lines += [f"  [{kind}] {p.message}" for p in problems if p.kind == kind]
        if "preview" in entry:
            lines.append(f"  preview: {entry['preview']}")
        lines.append("")
    return "\n".join(lines)


def _size(size: list[int] | tuple[int, int] | None) -> str:
    return "-" if size is None else f"{size[0]}x{size[1]}"
