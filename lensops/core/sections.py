"""The sections of `params.yaml`: one typed model per stage, each rejecting unknown keys.

`lensops.core.settings.Settings` puts them together and loads them; this module only declares
what each section holds, its defaults and its limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KNOWN_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "TGA", "ICO", "JPEG2000")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSettings(Section):
    raw: Path = Path("data/raw")
    prepared: Path = Path("data/prepared")
    classes: list[str] = Field(default_factory=list, description="expected labels; empty: the folders found")


class DemoSettings(Section):
    size: int = Field(32, ge=8, le=512)


class QualitySettings(Section):
    """Expectations on how the images look; each is off while its `max_..._fraction` is null.

    An image counts as dark, bright, flat, blurry or oddly shaped by the threshold next to it;
    the expectation fails when more than the given fraction of the images (0-1) do.
    """

    dark_below: float = Field(20.0, ge=0, le=255, description="mean grey level (0-255) under which an image is dark")
    max_dark_fraction: float | None = Field(None, ge=0, le=1)
    bright_above: float = Field(235.0, ge=0, le=255, description="mean grey level over which an image is washed out")
    max_bright_fraction: float | None = Field(None, ge=0, le=1)
    low_contrast_below: float = Field(10.0, ge=0, description="grey-level standard deviation under which it is flat")
    max_low_contrast_fraction: float | None = Field(None, ge=0, le=1)
    blur_below: float = Field(10.0, ge=0, description="variance of the Laplacian under which an image is blurry")
    max_blurry_fraction: float | None = Field(None, ge=0, le=1)
    aspect_ratio_range: tuple[float, float] = Field((0.25, 4.0), description="width/height outside it is odd")
    max_odd_aspect_fraction: float | None = Field(None, ge=0, le=1)
    modes: list[str] | None = Field(None, description="colour modes expected (e.g. [RGB, L]); null: any")
    max_other_mode_fraction: float = Field(0.0, ge=0, le=1, description="with `modes`: share allowed outside them")

    @model_validator(mode="after")
    def _ordered_range(self) -> QualitySettings:
        low, high = self.aspect_ratio_range
        if not 0 < low <= high:
            raise ValueError(f"aspect_ratio_range must be [low, high] with 0 < low <= high, got {[low, high]}")
        return self


class NearDuplicateSettings(Section):
    """Near-identical images (resized, re-encoded, slightly cropped or brightened copies), by pHash."""

    max_distance: int | None = Field(
        4, ge=0, le=16, description="Hamming distance (of 64 bits) up to which two images are one picture; null: off"
    )


class ValidateSettings(Section):
    report: Path = Path("reports/data_validation.json")
    manifest: Path = Path("reports/data_manifest.parquet")
    formats: list[str] = Field(default_factory=lambda: ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
    max_pixels: int = Field(40_000_000, gt=0)
    max_bytes: int = Field(50 * 2**20, gt=0, description="a larger file is bad without being read")
    max_frames: int = Field(1000, ge=1, description="frames counted (never walked) past this are bad")
    max_scans: int = Field(100, ge=1, description="a JPEG with more scans (progressive passes) is bad")
    min_width: int = Field(8, ge=1)
    min_height: int = Field(8, ge=1)
    min_images_per_class: int = Field(10, ge=1)
    decode_timeout_s: float = Field(10.0, gt=0, description="per file; a decoder still running is stopped")
    worker_memory_mb: int = Field(768, ge=64, description="memory a decoding process may add to its start-up size")
    workers: int | None = Field(None, ge=1, description="decoding processes; null: one per available core")
    near_duplicates: NearDuplicateSettings = Field(default_factory=NearDuplicateSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, formats: list[str]) -> list[str]:
        upper = [f.upper() for f in formats]
        for f in upper:
            if f not in KNOWN_FORMATS:
                raise ValueError(f"unknown image format {f!r}; known: {', '.join(KNOWN_FORMATS)}")
        return upper


class PrepareSettings(Section):
    train: float = Field(0.7, ge=0, le=1)
    val: float = Field(0.15, ge=0, le=1)
    test: float = Field(0.15, ge=0, le=1)
    seed: int = 42

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> PrepareSettings:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        if self.train == 0:
            raise ValueError("train fraction must be above 0")
        return self


class PreprocessingSpec(Section):
    """How an image becomes the network's input tensor; stored as JSON with each model version.

    `data.transforms.eval_transform(spec)` is the one function that applies it.
    """

    size: int = Field(32, ge=8, le=1024, description="the network sees size x size")
    resize: Literal["stretch", "shorter_side_crop"] = "stretch"
    crop_fraction: float = Field(0.875, gt=0, le=1, description="shorter_side_crop: centre crop of the short side")
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(std) <= 0:
            raise ValueError("every std must be above 0")
        return std


def _default_augment() -> list[dict[str, dict[str, Any]]]:
    return [
        {"Affine": {"rotate": [-10, 10], "scale": [0.9, 1.1], "translate_percent": [-0.08, 0.08], "p": 0.8}},
        {"RandomBrightnessContrast": {"brightness_limit": 0.2, "contrast_limit": 0.2, "p": 0.5}},
    ]


class TrainSettings(Section):
    model: str = "smallcnn"
    weights: Path | None = Field(None, description="local state-dict file to start the backbone from")
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.003, gt=0)
    weight_decay: float = Field(0.0005, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    scheduler: Literal["onecycle", "cosine", "none"] = "onecycle"
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    early_stopping_patience: int = Field(5, ge=1, description="epochs without a better val_accuracy")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP processes)")
    use_gpu: bool | Literal["auto"] = "auto"
    input: Literal["auto", "ray_data", "dataloader"] = Field(
        "auto",
        description="ray_data: decode in Ray Data tasks; dataloader: a DataLoader in each worker; auto: see README",
    )
    loader_workers: int = Field(0, ge=0, description="DataLoader processes per worker when input is dataloader")
    seed: int = 42
    deterministic: bool = Field(False, description="identical weights from identical inputs; see the README")
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0, description="worker failures a run survives, resuming from its checkpoint")
    preprocessing: PreprocessingSpec = Field(default_factory=PreprocessingSpec)
    augment: list[dict[str, dict[str, Any] | None]] = Field(default_factory=_default_augment)
    reference_max: int = Field(
        20_000, ge=100, description="training images whose embeddings are registered as monitoring's reference"
    )


class AuditSettings(Section):
    """`lensops data audit`: out-of-sample predictions by k-fold training, then cleanlab's checks.

    Each fold trains train's model, optimiser, augmentation and preprocessing for `epochs` epochs
    on the other folds' images and predicts only its own.
    """

    report_dir: Path = Path("reports/audit")
    folds: int = Field(
        5, ge=2, le=20, description="k of the k-fold: each image is predicted by the one fold model that never saw it"
    )
    epochs: int = Field(6, ge=1, description="epochs per fold model (the rest of the recipe is train's)")
    top: int = Field(40, ge=1, description="suspects printed, drawn and written to labels.csv for review")
    neighbours: int = Field(10, ge=1, description="k of cleanlab's kNN outlier score on the embeddings")
    seed: int = 0


class RegistrySettings(Section):
    model_name: str = Field("digits", min_length=1)
    experiment: str = Field("digits", min_length=1)
    trust_artifacts: bool = Field(False, description="load versions without checking their files for code")


class TuneSettings(Section):
    num_samples: int = Field(4, ge=1)
    max_epochs: int = Field(6, ge=1)
    grace_period: int = Field(2, ge=1)
    max_concurrent: int = Field(1, ge=1, description="trials at once (each runs its own workers)")
    space: dict[str, dict[str, list[Any]]] = Field(
        default_factory=lambda: {
            "train.lr": {"loguniform": [0.0005, 0.01]},
            "train.batch_size": {"choice": [32, 64, 128]},
        },
        description="dotted key -> {sampler: arguments}; samplers: choice, uniform, loguniform, randint",
    )


class CanarySettings(Section):
    """`lensops canary`: a candidate answering a share of requests, stopped as soon as it does worse."""

    enabled: bool = Field(True, description="serving follows the `canary` alias (one idle replica without one)")
    client_header: str = Field("X-Client-Key", description="requests carrying it stick to one version per key")
    window: int = Field(200, ge=10, description="the latest answers of each version that judge the canary")
    min_requests: int = Field(50, ge=1, description="canary answers in the window before it is judged")
    max_error_rate_increase: float | None = Field(0.05, ge=0, le=1, description="over the champion's: stop past it")
    max_p95_ratio: float | None = Field(2.0, gt=0, description="its p95 latency over the champion's: stop past it")


class ServeSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model: str | None = Field(None, description="version, alias or models:/ URI; default models:/<name>@champion")
    max_body_bytes: int = Field(10 * 2**20, ge=1)
    allowed_formats: list[str] = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
    max_pixels: int = Field(40_000_000, ge=1, description="all frames together, checked from the header")
    max_frames: int = Field(1000, ge=1, description="frames counted (never walked) past this: 422")
    max_scans: int = Field(100, ge=1, description="a JPEG with more scans (progressive passes): 422")
    decode_timeout_s: float = Field(2.0, gt=0, description="per upload; a decoder still running is killed: 422")
    decode_workers: int = Field(2, ge=1, description="decoding processes per preprocessing replica")
    decoder_memory_mb: int = Field(512, ge=64, description="memory a decoding process may add to its start-up size")
    heavy_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="the most of one core's time that uploads over 4 MP, 16 frames or 12 scans get while"
        " normal traffic flows (all they need otherwise)",
    )
    top_k: int = Field(3, ge=1)
    max_batch_size: int = Field(32, ge=1, description="requests the ingress gathers into one batch")
    batch_wait_ms: float = Field(10.0, ge=0, description="how long the ingress waits for a batch to fill")
    request_timeout_s: float = Field(10.0, gt=0)
    max_ongoing_requests: int = Field(
        256,
        ge=1,
        description="requests one ingress replica takes at once; above max_images_in_flight, so that"
        " overload is answered by lensops's JSON 503 before Ray Serve queues",
    )
    max_queued_requests: int = Field(64, ge=1, description="waiting in Ray Serve beyond that: its own 503 at once")
    max_images_in_flight: int = Field(128, ge=1, description="images (a batch counts each) answered at once; 503 past")
    max_batch_files: int = Field(64, ge=1, description="files one /predict/batch request may carry")
    alias_poll_seconds: float = Field(2.0, gt=0, description="how often the served alias is re-resolved")
    preprocess_replicas: int = Field(1, ge=1)
    model_replicas: int = Field(1, ge=1)
    replica_cpus: float = Field(0.25, gt=0, description="per replica; fractional so small machines can host all")
    use_gpu: bool | Literal["auto"] = "auto"
    shadow: str | None = Field(None, description="version or alias also run on answered images, after the answer")
    shadow_fraction: float = Field(1.0, ge=0, le=1, description="share of answered images the shadow sees too")
    canary: CanarySettings = Field(default_factory=CanarySettings)


class CaptureSettings(Section):
    """Which uploaded images serving keeps (exact bytes, by sha256), and how much of them."""

    enabled: bool = True
    dir: Path = Path("reports/capture")
    sample_rate: float = Field(0.1, ge=0, le=1, description="share of ordinary answers kept")
    low_score_below: float | None = Field(0.6, gt=0, le=1, description="always keep answers scored below this")
    outliers: bool = Field(True, description="always keep images unlike the training data (novelty or stats)")
    max_bytes: int = Field(512 * 2**20, ge=0, description="byte budget; the least recently seen go first")
    retention_days: float | None = Field(30, gt=0, description="forget images not seen for this long")


class MonitoringSettings(Section):
    log_dir: Path = Path("reports/production_log")
    shadow_log_dir: Path = Path("reports/shadow_log")
    flush_seconds: float = Field(1.0, gt=0)
    flush_records: int = Field(512, ge=1)
    retention_days: float | None = Field(90, gt=0, description="segments older than this are removed")
    compact_records: int = Field(50_000, ge=100, description="small segments are merged up to this many records")
    capture: CaptureSettings = Field(default_factory=CaptureSettings)


class LabelSettings(Section):
    """Labelling batches: what `lensops label export` picks, where imported labels and their provenance go."""

    export_dir: Path = Path("reports/labelling")
    batch_size: int = Field(200, ge=1, description="images per exported batch (--n)")
    strategy: Literal["balanced", "novel", "uncertain", "diverse", "random"] = "balanced"
    image_url_prefix: str = Field(
        "/data/local-files/?d=", description="prefix of image paths in Label Studio tasks (its local-files root)"
    )
    provenance_dir: str = Field(".provenance", description="folder inside data.raw for provenance records")


class DriftSettings(Section):
    report_dir: Path = Path("reports/drift")
    verdict: Literal["novelty", "shift"] = Field(
        "novelty",
        description="novelty: production in regions the version has not learnt (one-sided); "
        "shift: Evidently's two-sample embeddings test decides",
    )
    novelty_share: float = Field(0.1, gt=0, lt=1, description="drift above this share of novel records")
    novelty_quantile: float = Field(
        0.99, gt=0.5, lt=1, description="a record is novel past this quantile of held-out validation distances"
    )
    novelty_method: Literal["lof", "knn"] = Field(
        "lof", description="lof: density relative to the nearest training images; knn: mean distance to them"
    )
    novelty_k: int = Field(20, ge=1, description="nearest training embeddings a record is compared with")
    novelty_stats: list[str] = Field(
        default_factory=lambda: ["brightness", "contrast"],
        description="a record is novel too when one of these image stats is outside the baseline's whole range",
    )
    method: Literal["model", "mmd", "ratio", "distance"] = Field(
        "model", description="Evidently's embeddings drift method (the shift test)"
    )
    threshold: float = Field(
        0.7, gt=0, description="shift test: model: ROC AUC; mmd: MMD^2; ratio: share of drifted components; distance"
    )
    bootstrap: bool = Field(False, description="compare against a bootstrap quantile instead of the threshold")
    pca_components: int | None = Field(
        32, ge=1, description="PCA of the embeddings (fitted on the baseline) before the test; null for none"
    )
    min_records: int = Field(100, ge=2, description="fewer production records than this: too few to judge")
    column_threshold: float = Field(0.05, gt=0, lt=1, description="p-value for the label and image-stat tests")
    report_sample: int = Field(500, ge=10, description="rows per side drawn for the HTML report's projection")
    experiment: str = Field("monitoring", min_length=1, description="MLflow experiment of drift and retrain runs")
    clusters: int = Field(8, ge=1, description="k-means clusters of the breakdown (baseline and production together)")
    cluster_ratio: float = Field(2.0, gt=1, description="flag a group whose production share is this x its baseline's")
    group_min_records: int = Field(10, ge=1, description="production records a class or cluster needs to be flagged")
    grid_images: int = Field(8, ge=0, description="images per flagged group in the grids; 0 for none")
    seed: int = 0


class MonitorSettings(Section):
    every: str = Field("15m", description="time between two iterations: seconds, or 30s, 15m, 2h, 1d")
    retrain: bool = Field(False, description="run the retraining pipeline when an iteration finds drift")
    webhooks: list[str] = Field(default_factory=list, description="URLs that receive each change of state (JSON)")
    payload: Literal["lensops", "slack"] = Field("lensops", description="slack: a Slack incoming-webhook message")
    post_on_start: bool = Field(True, description="the first iteration posts the state it finds, changed or not")
    webhook_attempts: int = Field(4, ge=1, le=20, description="tries per webhook call (exponential backoff)")
    webhook_backoff_s: float = Field(1.0, gt=0, description="first wait between two tries; doubles each time")
    webhook_timeout_s: float = Field(10.0, gt=0, description="per try")
    state_dir: Path = Path("reports/monitor")

    @field_validator("every")
    @classmethod
    def _every(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("webhooks")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float) -> float:
    """Seconds in `90`, `90s`, `15m`, `2h` or `1d`; a clear error otherwise."""
    text = str(value).strip().lower()
    number, unit = (text[:-1], text[-1]) if text and text[-1] in DURATION_UNITS else (text, "s")
    try:
        seconds = float(number) * DURATION_UNITS[unit]
    except ValueError:
        raise ValueError(f"{value!r} is not a duration: use seconds or a number with s, m, h or d (15m)") from None
    if not seconds > 0:
        raise ValueError(f"{value!r}: a duration must be positive")
    return seconds


class RetrainSettings(Section):
    command: list[str] = Field(default_factory=lambda: ["dvc", "repro"], min_length=1)
    promote: bool = Field(True, description="promote the new version when its review passes")
    cooldown_seconds: float = Field(3600.0, ge=0, description="minimum time between two triggered retrainings")
    lock_file: Path = Path("reports/retrain/retrain.lock")
    state_file: Path = Path("reports/retrain/last_trigger.json")
    timeout_seconds: float | None = Field(None, gt=0, description="stop the command after this long")
