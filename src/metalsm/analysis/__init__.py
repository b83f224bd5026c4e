"""Factor analysis: frequency ratio, differentiation, MIC, VIF and factor selection."""

from metalsm.analysis._factors import (
    FactorAnalysis,
    FactorClasses,
    analyze_factors,
    collinearity,
    differentiation,
    factor_classes,
    fr_table,
    mic,
    select_factors,
    vif,
)

__all__ = [
    "FactorAnalysis",
    "FactorClasses",
    "analyze_factors",
    "collinearity",
    "differentiation",
    "factor_classes",
    "fr_table",
    "mic",
    "select_factors",
    "vif",
]
