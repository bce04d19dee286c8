"""Knowing how a batch run went without labels: each image's confidence (`confidence`), a run's
distributions from its summary rows (`night`), and how far they moved from earlier runs (`drift`)."""
from .confidence import CONFIDENCE_BINS, image_confidence
from .drift import DEFAULT_THRESHOLDS, Distributions, compare_distributions, jensen_shannon, population_stability
from .night import NightStatistics

__all__ = ["CONFIDENCE_BINS", "DEFAULT_THRESHOLDS", "Distributions", "NightStatistics", "compare_distributions",
           "image_confidence", "jensen_shannon", "population_stability"]
