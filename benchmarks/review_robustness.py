"""Does the robustness gate tell a model trained with rotation from one trained without?

    .venv/bin/python benchmarks/review_robustness.py [--epochs 8] [--angle 30] [--seeds 0 1]

For each seed, on the full digits (10 classes, 32 px), in process:

1. train `rotation`: the default augmentation, its rotation widened to ±angle, promoted to champion;
2. train `upright`: the same with no rotation at all (brightness and contrast only);
3. review `upright` against `rotation` with one strong check, `Rotate(limit=[angle, angle], p=1)`,
   then the other way round.

It prints, per seed, both versions' plain accuracy, their accuracy under the rotation and the
verdict of the `max_robustness_drop` gate each way (threshold `review.gates.max_robustness_drop`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def one_seed(seed: int, args, root: Path) -> dict[str, float | str]:
    from data.digits import write_digits
    from data.prepare import prepare_dataset
    from lensops.core.registry import Registry
    from lensops.core.settings import load_settings
    from training.review import review
    from training.train import train

    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    check = f"review.robustness=[{{Rotate: {{limit: [{args.angle}, {args.angle}], p: 1}}}}]"
    common = [f"train.epochs={args.epochs}", f"train.seed={seed}", "train.input=dataloader", check,
              "registry.model_name=robust", "registry.experiment=robust", "review.latency_repeats=3"]  # fmt: skip
    rotation = f"train.augment=[{{Affine: {{rotate: [-{args.angle}, {args.angle}], p: 0.8}}}}, " \
               "{RandomBrightnessContrast: {brightness_limit: 0.2, contrast_limit: 0.2, p: 0.5}}]"  # fmt: skip
    upright = "train.augment=[{RandomBrightnessContrast: {brightness_limit: 0.2, contrast_limit: 0.2, p: 0.5}}]"
    settings = load_settings(root / "params.yaml", common)
    write_digits(settings.path(settings.data.raw), size=32)
    prepare_dataset(settings, progress=False)
    versions = {}
    for name, augment in (("rotation", rotation), ("upright", upright)):
        versions[name] = train(load_settings(root / "params.yaml", [*common, augment]), progress=False).model_version
    registry, out = Registry.of(settings), {}
    for challenger, champion in (("upright", "rotation"), ("rotation", "upright")):
        registry.set_alias("champion", versions[champion], reason="benchmark")
        result = review(settings, challenger_ref=versions[challenger], report_dir=root / f"review-{challenger}")
        gate = next(g for g in result.gates if g.name == "max_robustness_drop")
        for contender in result.contenders:
            key = "rotation" if contender.version.version == versions["rotation"] else "upright"
            out[f"{key} accuracy"] = contender.metrics["accuracy"]
            out[f"{key} rotated"] = next(iter(contender.robustness.values()))["accuracy"]
        out[f"{challenger} vs {champion}"] = f"{'pass' if gate.passed else 'HOLD'} (drop {gate.value:+.3f})"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--angle", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    rows = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="lensops-robustness-") as tmp:
            rows[seed] = one_seed(seed, args, Path(tmp))
        print(f"seed {seed}: " + "; ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
                                           for k, v in rows[seed].items()), flush=True)  # fmt: skip
    import ray

    ray.shutdown()


if __name__ == "__main__":
    main()
