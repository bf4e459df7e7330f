"""Data tests: plant each kind of bad file in a real folder and check it is named, with why."""

import json
import shutil

import pytest
from PIL import Image

from data.manifest import build_manifest, read_manifest
from data.validation import validate_dataset, validate_manifest
from lensops.core.settings import ValidateSettings, load_settings
from tests.imagefactory import encode, noise_image, png_bomb, truncated

CFG = ValidateSettings()

# (file to plant, how to make its bytes, words its reason must contain)
PLANTED = [
    ("ant/truncated.jpg", lambda: truncated(encode(noise_image(501, (96, 96)), "JPEG")), "truncated"),
    ("ant/truncated.png", lambda: truncated(encode(noise_image(502, (96, 96)), "PNG")), "truncated"),
    ("ant/zero.png", lambda: b"", "empty file (0 bytes)"),
    ("bee/text.png", lambda: b"this is not an image\n", "not an image"),
    ("bee/bomb.png", png_bomb, "400.0 MP exceeds the 40.0 MP limit"),
    ("bee/picture.ppm", lambda: encode(noise_image(503), "PPM"), "format PPM is not allowed"),
    (
        "cat/really_a_jpeg.png",
        lambda: encode(noise_image(504), "JPEG"),
        "extension .png does not match its content (JPEG)",
    ),
    ("cat/tiny.png", lambda: encode(noise_image(505, (4, 4)), "PNG"), "narrower than the minimum width 8"),
    ("stray.png", lambda: encode(noise_image(6), "PNG"), "not inside a class folder"),
]


def test_a_clean_dataset_passes(good_raw):
    report = validate_manifest(build_manifest(good_raw, max_pixels=CFG.max_pixels), CFG)
    assert report.ok, report.to_json()
    assert (report.n_images, report.n_classes) == (36, 3)
    assert report.bad_files == [] and report.duplicates == []
    assert all(e.success for e in report.expectations)


@pytest.mark.parametrize("relpath, make, reason", PLANTED, ids=[p[0] for p in PLANTED])
def test_each_bad_file_is_named_with_its_reason(good_raw, relpath, make, reason):
    target = good_raw / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(make())
    report = validate_manifest(build_manifest(good_raw, max_pixels=CFG.max_pixels), CFG)
    assert not report.ok
    assert [b["path"] for b in report.bad_files] == [relpath]
    assert reason in report.bad_files[0]["reason"]


def test_all_bad_files_at_once_and_nothing_is_deleted(good_raw):
    for relpath, make, _ in PLANTED:
        (good_raw / relpath).parent.mkdir(parents=True, exist_ok=True)
        (good_raw / relpath).write_bytes(make())
    before = sorted(p for p in good_raw.rglob("*") if p.is_file())
    report = validate_manifest(build_manifest(good_raw, max_pixels=CFG.max_pixels, workers=2), CFG)
    assert sorted(b["path"] for b in report.bad_files) == sorted(p[0] for p in PLANTED)
    assert sorted(p for p in good_raw.rglob("*") if p.is_file()) == before


def test_bomb_is_rejected_from_its_header_without_decoding(good_raw):
    (good_raw / "ant" / "bomb.png").write_bytes(png_bomb())
    manifest = build_manifest(good_raw, max_pixels=CFG.max_pixels)
    row = manifest.set_index("path").loc["ant/bomb.png"]
    assert row["pixels"] == 20000 * 20000
    assert not row["decoded"]  # judged by its header; 400 MP never allocated


def test_identical_image_under_two_labels_is_a_duplicate(good_raw):
    shutil.copy(good_raw / "ant" / "img_0000.png", good_raw / "bee" / "same_as_ant.png")
    report = validate_manifest(build_manifest(good_raw, max_pixels=CFG.max_pixels), CFG)
    assert report.duplicates == [["ant/img_0000.png", "bee/same_as_ant.png"]]
    reasons = {b["path"]: b["reason"] for b in report.bad_files}
    assert reasons["bee/same_as_ant.png"] == "identical to ant/img_0000.png (a different label)"
    assert "identical_images_share_one_label" in [e.name for e in report.expectations if not e.success]


def test_identical_images_under_one_label_are_allowed(good_raw):
    shutil.copy(good_raw / "ant" / "img_0000.png", good_raw / "ant" / "again.png")
    assert validate_manifest(build_manifest(good_raw, max_pixels=CFG.max_pixels), CFG).ok


def test_an_underfilled_class_fails_naming_the_class(good_raw):
    for p in sorted((good_raw / "cat").iterdir())[3:]:
        p.unlink()
    report = validate_manifest(build_manifest(good_raw, max_pixels=CFG.max_pixels), CFG)
    failed = {e.name: e.detail for e in report.expectations if not e.success}
    assert list(failed) == ["min_images_per_class"]
    assert "'cat' has 3 valid images (minimum 10)" in failed["min_images_per_class"]
    assert report.bad_files == []  # no file is at fault


def test_labels_must_match_params_classes_when_given(good_raw):
    manifest = build_manifest(good_raw, max_pixels=CFG.max_pixels)
    assert validate_manifest(manifest, CFG, ["ant", "bee", "cat"]).ok
    report = validate_manifest(manifest, CFG, ["ant", "bee", "dog"])
    failed = {e.name: e.detail for e in report.expectations if not e.success}
    assert "missing: ['dog']" in failed["labels_match_params"]
    assert "not expected: ['cat']" in failed["labels_match_params"]
    assert "'dog' has 0" in failed["min_images_per_class"]


def test_empty_folder_is_invalid(project):
    (project / "data" / "raw").mkdir(parents=True)
    report = validate_manifest(build_manifest(project / "data" / "raw", max_pixels=CFG.max_pixels), CFG)
    assert not report.ok and report.n_images == 0


def test_missing_folder_says_what_to_do(project):
    with pytest.raises(FileNotFoundError, match="lensops data demo"):
        build_manifest(project / "nope", max_pixels=CFG.max_pixels)


def test_hidden_files_are_skipped(good_raw):
    (good_raw / ".DS_Store").write_bytes(b"\x00junk")
    (good_raw / "ant" / ".hidden.png").write_bytes(b"")
    assert validate_manifest(build_manifest(good_raw, max_pixels=CFG.max_pixels), CFG).ok


def test_awkward_valid_images_pass(good_raw):
    (good_raw / "ant" / "rgba.png").write_bytes(encode(noise_image(507, mode="RGBA"), "PNG"))
    (good_raw / "ant" / "grey.jpg").write_bytes(encode(noise_image(508, mode="L"), "JPEG"))
    (good_raw / "bee" / "frame.webp").write_bytes(encode(noise_image(509), "WEBP"))
    (good_raw / "bee" / "frame.bmp").write_bytes(encode(noise_image(510), "BMP"))
    (good_raw / "cat" / "frame.tif").write_bytes(encode(noise_image(511), "TIFF"))
    frames = [noise_image(512 + i).convert("P") for i in range(3)]
    frames[0].save(good_raw / "cat" / "anim.gif", save_all=True, append_images=frames[1:])
    manifest = build_manifest(good_raw, max_pixels=CFG.max_pixels)
    report = validate_manifest(manifest, CFG)
    assert report.ok, report.bad_files
    assert manifest.set_index("path").loc["cat/anim.gif", "frames"] == 3


def test_isolated_and_in_process_manifests_agree(good_raw):
    in_process = build_manifest(good_raw, max_pixels=CFG.max_pixels, isolate=False)
    one_worker = build_manifest(good_raw, max_pixels=CFG.max_pixels, workers=1)
    two_workers = build_manifest(good_raw, max_pixels=CFG.max_pixels, workers=2)
    assert in_process.equals(one_worker) and in_process.equals(two_workers)


def test_manifest_reuse_decodes_only_changed_files(good_raw):
    first = build_manifest(good_raw, max_pixels=CFG.max_pixels)
    (good_raw / "ant" / "new.png").write_bytes(encode(noise_image(99), "PNG"))
    marked = first.copy()
    marked["mode"] = "reused"  # a row taken from `reuse` keeps the mark; a decoded one cannot have it
    second = build_manifest(good_raw, max_pixels=CFG.max_pixels, reuse=marked)
    decoded = second.loc[second["mode"] != "reused", "path"].tolist()
    assert decoded == ["ant/new.png"]
    assert len(second) == len(first) + 1


def test_stage_writes_report_and_manifest(good_raw, project):
    (good_raw / "ant" / "zero.png").write_bytes(b"")
    settings = load_settings()
    report = validate_dataset(settings)
    written = json.loads((project / "reports" / "data_validation.json").read_text())
    assert {"ok", "n_images", "n_classes", "bad_files", "duplicates", "expectations"} <= set(written)
    assert written["ok"] is False and written["n_images"] == 37
    assert written["bad_files"] == [{"path": "ant/zero.png", "reason": "empty file (0 bytes)"}]
    assert all({"name", "success", "detail"} == set(e) for e in written["expectations"])
    assert report.ok is False
    with Image.open(project / "reports" / "data_validation.png") as chart:  # the per-class chart
        chart.load()
        assert chart.width > 200
    kept = read_manifest(project / "reports" / "data_manifest.parquet", cfg=settings.validate_)
    assert kept is not None and len(kept) == 37
    assert read_manifest(project / "reports" / "data_manifest.parquet", max_pixels=1) is None


def test_quarantine_moves_bad_files_with_reasons(good_raw, project):
    (good_raw / "ant" / "zero.png").write_bytes(b"")
    (good_raw / "bee" / "text.png").write_text("hello")
    quarantine = project / "quarantine"
    (quarantine / "ant").mkdir(parents=True)
    (quarantine / "ant" / "zero.png").write_bytes(b"an earlier quarantined file")  # must survive
    report = validate_dataset(load_settings(), quarantine_dir=quarantine)
    assert not (good_raw / "ant" / "zero.png").exists() and not (good_raw / "bee" / "text.png").exists()
    assert (quarantine / "ant" / "zero.png").read_bytes() == b"an earlier quarantined file"
    assert (quarantine / "ant" / "zero.1.png").read_bytes() == b""
    assert (quarantine / "bee" / "text.png").read_text() == "hello"
    log = [json.loads(line) for line in (quarantine / "quarantine.jsonl").read_text().splitlines()]
    assert {e["path"]: e["reason"] for e in log} == {
        "ant/zero.png": "empty file (0 bytes)",
        "bee/text.png": "not an image in a known format; allowed formats: PNG, JPEG, WEBP, BMP, GIF, TIFF",
    }
    assert len(report.quarantined) == 2
    assert validate_dataset(load_settings()).ok  # what is left is valid
