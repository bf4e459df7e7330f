"""The rules of the validation suite, each a Great Expectations expectation.

Row rules name the files that break them, with a reason. Quality rules judge the dataset as a
whole: each allows a fraction of the images to be dark, washed out, flat, blurry or oddly
shaped (GE's `mostly`), and is off until that fraction is set in `validate.quality`.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from lensops.core.settings import QualitySettings, ValidateSettings

Rule = tuple[str, object, Callable[[pd.Series], str]]


def _some(paths: list[str], shown: int = 3) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def row_rules(cfg: ValidateSettings, twins: dict[str, list[str]], near: dict[str, list[str]]) -> list[Rule]:
    """(name, GE expectation, reason for a failing row) for each per-file rule.

    `twins` maps a path to the other paths with identical bytes under another label, `near` to
    the near copies (other bytes, same picture) under another label.
    """
    import great_expectations.expectations as gxe

    allowed = ", ".join(cfg.formats)
    return [
        (
            "files_decode",
            gxe.ExpectColumnValuesToBeNull(column="error"),
            lambda r: r["error"],
        ),
        (
            "files_inside_class_folder",
            gxe.ExpectColumnValuesToNotBeNull(column="label"),
            lambda r: "not inside a class folder (expected raw/<label>/<file>)",
        ),
        (
            "extension_matches_content",
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A="ext_format", column_B="format", ignore_row_if="either_value_is_missing"
            ),
            lambda r: f"extension {r['extension'] or '(none)'} does not match its content ({r['format']})",
        ),
        (
            "format_allowed",
            gxe.ExpectColumnValuesToBeInSet(column="format", value_set=list(cfg.formats)),
            lambda r: f"format {r['format']} is not allowed (allowed: {allowed})",
        ),
        (
            "pixels_under_limit",
            gxe.ExpectColumnValuesToBeBetween(column="pixels", max_value=cfg.max_pixels),
            lambda r: (
                f"{r['width']}x{r['height']}"
                + (f"x{r['frames']} frames" if r["frames"] and r["frames"] > 1 else "")
                + f" = {_mp(r['pixels'])} exceeds the {_mp(cfg.max_pixels)} limit"
                " (possible decompression bomb; not decoded)"
            ),
        ),
        (
            "width_at_least_minimum",
            gxe.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_width),
            lambda r: f"{r['width']}x{r['height']} is narrower than the minimum width {cfg.min_width}",
        ),
        (
            "height_at_least_minimum",
            gxe.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_height),
            lambda r: f"{r['width']}x{r['height']} is shorter than the minimum height {cfg.min_height}",
        ),
        *_duplicate_rules(twins, near),
    ]


def _duplicate_rules(twins: dict[str, list[str]], near: dict[str, list[str]]) -> list[Rule]:
    import great_expectations.expectations as gxe

    return [
        (
            "identical_images_share_one_label",
            gxe.ExpectColumnValuesToBeBetween(column="labels_with_same_content", max_value=1),
            lambda r: f"identical to {', '.join(twins.get(r['path'], []))} (a different label)",
        ),
        (
            "near_images_share_one_label",
            gxe.ExpectColumnValuesToBeBetween(column="labels_with_near_copies", max_value=1),
            lambda r: f"a near copy of {_some(near.get(r['path'], []))} (a different label)",
        ),
    ]


def quality_rules(q: QualitySettings) -> list[tuple[str, object, str]]:
    """(name, GE expectation, what a failing image is) for each quality rule that is switched on."""
    import great_expectations.expectations as gxe

    low, high = q.aspect_ratio_range
    wanted = [
        ("few_dark_images", q.max_dark_fraction, "brightness", {"min_value": q.dark_below},
         f"dark (mean grey under {q.dark_below:g})"),
        ("few_washed_out_images", q.max_bright_fraction, "brightness", {"max_value": q.bright_above},
         f"washed out (mean grey over {q.bright_above:g})"),
        ("few_flat_images", q.max_low_contrast_fraction, "contrast", {"min_value": q.low_contrast_below},
         f"flat (grey standard deviation under {q.low_contrast_below:g})"),
        ("few_blurry_images", q.max_blurry_fraction, "blur", {"min_value": q.blur_below},
         f"blurry (variance of the Laplacian under {q.blur_below:g})"),
        ("few_odd_aspect_ratios", q.max_odd_aspect_fraction, "aspect_ratio", {"min_value": low, "max_value": high},
         f"oddly shaped (width/height outside {low:g}-{high:g})"),
    ]  # fmt: skip
    rules = [
        (name, gxe.ExpectColumnValuesToBeBetween(column=column, mostly=1 - fraction, **bounds), what)
        for name, fraction, column, bounds, what in wanted
        if fraction is not None
    ]
    if q.modes:
        expectation = gxe.ExpectColumnValuesToBeInSet(
            column="mode", value_set=q.modes, mostly=1 - q.max_other_mode_fraction
        )
        rules.append(("colour_modes_expected", expectation, f"in a colour mode other than {', '.join(q.modes)}"))
    return rules
