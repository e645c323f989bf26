"""Synthetic chest X-ray data with real NIH label statistics and controlled label noise.

No real chest X-ray images are needed to train, validate and test the bundle: this module
writes small grayscale PNGs whose clean multi-label targets are sampled from the real NIH
ChestX-ray14 label combinations (so prevalence, imbalance and co-occurrence are those of
NIH), whose pixels carry one class-specific pattern per positive disease, and whose
training and validation labels are corrupted by a configurable noise model. Test labels
are clean. Everything is deterministic given ``seed``.

Splits
------
``training``, ``validation``
    clean labels sampled from the NIH combination distribution, then corrupted by the
    noise model ("label" is noisy, "clean_label" is the truth).
``test``
    same distribution and image style as training, clean labels.
``test_shifted``
    clean labels sampled from the NIH combinations re-weighted by iterative proportional
    fitting so that the 14 per-class prevalences match the PadChest test set (about 78%
    No Finding), rendered with a different image style (the ``"shifted"`` entry of
    :data:`STYLES`: lower contrast, brighter gamma, more noise, a slight blur). The class
    patterns are the same. This mimics the paper's cross-hospital test sets.

Each split draws from its own random streams (``numpy`` generators seeded with
``[seed, split, stream]``), so changing the size of one split does not change another.

Modules: :mod:`.labels` (clean labels from the NIH combination table), :mod:`.noise` (noise
models and their measurement), :mod:`.anatomy` and :mod:`.patterns` (what is drawn),
:mod:`.render` (image style), :mod:`.dataset` (files and cache), :mod:`.stats` (deriving the
committed label statistics from the public metadata).
"""

from .dataset import (DEFAULT_PARAMS, GENERATOR_VERSION, NOISY_SPLITS, SPLITS, default_cache_dir,
                      ensure_synthetic, generate_synthetic, synthetic_datalist)
from .labels import (CLASSES, DISEASE_IDX, DISEASES, NF_IDX, NUM_CLASSES, STATS_FILE, combo_table, fit_combo_weights,
                     load_label_stats, sample_clean_labels, shifted_combo_weights)
from .noise import (BOMD_DEFAULTS, REPORT_FP_BASE, REPORT_FP_CAP, REPORT_MISS_RATE, REPORT_NF_FLIP, REPORT_PAIR_SWAP,
                    SIMILAR_PAIRS, apply_noise, expected_noise_rates, measure_noise, noise_slug, parse_noise,
                    split_noise_specs)
from .patterns import PATTERN_FUNCTIONS, PATTERNS
from .render import STYLES, render_images
