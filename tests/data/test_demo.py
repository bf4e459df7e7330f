import hashlib

from data.digits import write_digits
from data.manifest import build_manifest
from data.validation import validate_manifest
from lensops.core.settings import ValidateSettings


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


def test_demo_digits_are_deterministic_valid_and_complete(tmp_path):
    counts = write_digits(tmp_path / "a", size=32)
    write_digits(tmp_path / "b", size=32)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert list(counts) == [str(d) for d in range(10)] and sum(counts.values()) == 1797
    manifest = build_manifest(tmp_path / "a", max_pixels=10**6)
    assert set(zip(manifest.width, manifest.height, manifest["mode"], strict=True)) == {(32, 32, "L")}
    assert validate_manifest(manifest, ValidateSettings()).ok


def test_demo_leaves_other_files_alone(tmp_path):
    (tmp_path / "3").mkdir(parents=True)
    (tmp_path / "3" / "mine.png").write_bytes(b"user data")
    write_digits(tmp_path, size=8)
    assert (tmp_path / "3" / "mine.png").read_bytes() == b"user data"
