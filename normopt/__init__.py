"""normopt: normalized optimizers for large-batch training, on JAX and Optax."""

from normopt import schedules
from normopt._src.adaptive_nigt import AdaptiveNigtState, adaptive_nigt
from normopt._src.alias import (
                                block_sngm,
                                clars,
                                hidden_matrices,
                                lamb,
                                lars,
                                muon,
                                nigt,
                                normalized_sgdm,
                                normuon,
                                nshb,
                                qhm,
                                scion,
                                scion_norms,
                                signum,
                                snag,
                                sngd,
                                sngm,
)
from normopt._src.batch_growth import BatchGrowthState, batch_growth, replay_schedule
from normopt._src.distributed import assert_replicated
from normopt._src.extrapolate import (
                                IgtExtrapolateState,
                                igt_extrapolate,
                                igt_true_params,
)
from normopt._src.flax_dims import flax_weight_dimension_numbers
from normopt._src.momentum import HeavyBallState, QhCombineState, heavy_ball, qh_combine
from normopt._src.noise_scale import (
                                NoiseScaleEstimate,
                                NoiseScaleState,
                                gradient_noise_scale,
                                noise_scale_of,
                                track_noise_scale,
)
from normopt._src.normalize import (
                                NormalizeGlobalState,
                                NormalizePerBlockState,
                                normalize_global,
                                normalize_per_block,
)
from normopt._src.per_example import per_example_block_norms
from normopt._src.probes import NormProbe, norm_probes, probed, probed_dense
from normopt._src.seesaw import SeesawSchedule, seesaw_schedule
from normopt._src.telemetry import TRUST_STATUS, telemetry
from normopt._src.trust import TrustRatioState, exclude_bias_and_norm, trust_ratio

__version__ = "0.2.0.dev0"

__all__ = (
    "TRUST_STATUS",
    "AdaptiveNigtState",
    "BatchGrowthState",
    "HeavyBallState",
    "IgtExtrapolateState",
    "NoiseScaleEstimate",
    "NoiseScaleState",
    "NormProbe",
    "NormalizeGlobalState",
    "NormalizePerBlockState",
    "QhCombineState",
    "SeesawSchedule",
    "TrustRatioState",
    "adaptive_nigt",
    "assert_replicated",
    "batch_growth",
    "block_sngm",
    "clars",
    "exclude_bias_and_norm",
    "flax_weight_dimension_numbers",
    "gradient_noise_scale",
    "heavy_ball",
    "hidden_matrices",
    "igt_extrapolate",
    "igt_true_params",
    "lamb",
    "lars",
    "muon",
    "nigt",
    "noise_scale_of",
    "norm_probes",
    "normalize_global",
    "normalize_per_block",
    "normalized_sgdm",
    "normuon",
    "nshb",
    "per_example_block_norms",
    "probed",
    "probed_dense",
    "qh_combine",
    "qhm",
    "replay_schedule",
    "schedules",
    "scion",
    "seesaw_schedule",
    "scion_norms",
    "signum",
    "sngd",
    "sngm",
    "snag",
    "telemetry",
    "track_noise_scale",
    "trust_ratio",
)
