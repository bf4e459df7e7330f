"""Mutation fuzzing of the shared decoder: thousands of broken variants of valid images of every
allowed format. Every outcome is an accepted image or a 4xx rejection; nothing else escapes,
nothing outlives the deadline."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import as_completed

import pytest

from data.decoder_pool import DecoderPool
from data.images import ImageLimits, ImageRejected, decode_image
from tests.fuzz import mutant, mutants, seeds

N_MUTANTS = 5000
DEADLINE_S = 5.0
LIMITS = ImageLimits()


def decode_and_use(data: bytes, profile: str) -> tuple[str, tuple[int, int]]:
    """What validation and serving do with an image: decode (all frames, or drafted), then use it.

    Runs in a decoding worker; an accepted image must also survive the steps after decoding.
    """
    from data.images import to_rgb
    from data.quality import image_quality

    if profile == "validation":
        decoded = decode_image(data, LIMITS, all_frames=True)
        image_quality(decoded.image)
    else:
        decoded = decode_image(data, LIMITS, target_size=(32, 32))
    rgb = to_rgb(decoded.image)
    return decoded.format, rgb.size


def test_every_seed_is_a_valid_image_of_its_format():
    for name, data in seeds().items():
        decoded = decode_image(data, LIMITS, all_frames=True)
        expected = {"mpo": "JPEG", "png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP", "gif": "GIF"}
        assert decoded.format == expected.get(name.split("-")[0], name.split("-")[0].upper()), name
        if name.endswith(("animated", "pages")) or name == "mpo":
            assert decoded.frames > 1, name


def test_mutants_are_reproducible():
    assert mutant(0, 123) == mutant(0, 123)
    assert [n for n, _ in mutants(5, seed=1)] == [mutant(1, i)[0] for i in range(5)]


@pytest.mark.slow
def test_mutants_are_accepted_or_rejected_with_a_4xx_never_anything_else():
    outcomes: Counter[str] = Counter()
    escaped = []
    started = time.monotonic()
    with DecoderPool(workers=2, timeout_s=DEADLINE_S, memory_mb=512) as pool:
        futures = {}
        for i, (name, data) in enumerate(mutants(N_MUTANTS, seed=0)):
            profile = "validation" if i % 2 else "serving"
            futures[pool.submit(decode_and_use, data, profile)] = (name, profile)
        for future in as_completed(futures, timeout=DEADLINE_S * 20 + 120):
            name, profile = futures[future]
            try:
                future.result()
                outcomes["accepted"] += 1
            except ImageRejected as e:
                if not 400 <= e.status < 500 or not e.detail:
                    escaped.append((name, profile, f"status {e.status}: {e.detail!r}"))
                outcomes[f"{e.status} {e.code}" + (" (deadline)" if "took longer" in e.detail else "")] += 1
            except Exception as e:  # anything else is a bug in the decoder's contract
                escaped.append((name, profile, f"{type(e).__name__}: {e}"))
    elapsed = time.monotonic() - started
    print(f"{N_MUTANTS} mutants in {elapsed:.1f} s: {dict(outcomes)}")
    assert not escaped, "reproduce with tests.fuzz.mutant(seed, index):\n" + "\n".join(map(str, escaped[:20]))
    assert outcomes["accepted"] > N_MUTANTS // 20  # the mutations are not all fatal: the decoder is exercised
