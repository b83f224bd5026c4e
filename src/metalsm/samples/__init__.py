"""Samples: the sample-table value every model stage takes, negative sampling and
the credibility of every cell as a non-landslide sample."""

from metalsm.samples._credibility import (
    MembershipModel,
    credibility_map,
    fit_membership,
    write_credibility,
)
from metalsm.samples._negatives import (
    NEGATIVE_SAMPLERS,
    CredibilityBandWarning,
    NegativeRequest,
    band_mask,
    credibility_negatives,
    draw_negatives,
    draw_samples,
    random_negatives,
    sample_table,
)
from metalsm.samples._table import (
    Samples,
    read_sample_table,
    read_table_frame,
    warn_constant_factors,
    write_samples_vector,
)

__all__ = [
    "Samples",
    "read_sample_table",
    "read_table_frame",
    "warn_constant_factors",
    "write_samples_vector",
    "CredibilityBandWarning",
    "NEGATIVE_SAMPLERS",
    "NegativeRequest",
    "band_mask",
    "credibility_negatives",
    "draw_negatives",
    "draw_samples",
    "random_negatives",
    "sample_table",
    "MembershipModel",
    "credibility_map",
    "fit_membership",
    "write_credibility",
]
