"""How far a batch run's distributions moved from a reference (another run, or several pooled):
Jensen–Shannon divergence of the class shares, population stability index of the confidence
histogram, the error rate, throughput, classes that appeared or vanished."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# The defaults of `pipelines.monitor`: README ("Monitoring a night") gives the measured cases behind them.
DEFAULT_THRESHOLDS = {"max_js": 0.025, "max_psi": 0.2, "max_error_rate": 0.05}
_EPS = 1e-4  # shares below this count as this much in PSI: an empty bin is not an infinite change


@dataclass
class Distributions:
    """What a batch run's images looked like to the model. Shares sum to 1 (or are all 0 when no
    image was segmented); `class_images`: the share of images in which each class appears."""
    class_share: dict[str, float]
    class_images: dict[str, float]
    confidence_histogram: list[float]
    mean_confidence: float = 0.0
    low_confidence_fraction: float = 0.0
    mean_entropy: float = 0.0
    images: int = 0
    errors: int = 0
    pixels: int = 0
    images_per_s: float = 0.0
    settings: dict[str, str] = field(default_factory=dict)  # model URI, CRF: drift expected when they differ

    @property
    def error_rate(self) -> float:
        return self.errors / max(1, self.images + self.errors)

    def to_dict(self) -> dict:
        return {**asdict(self), "error_rate": self.error_rate}

    @classmethod
    def pooled(cls, runs: list[Distributions]) -> Distributions:
        """Several runs as one: shares weighted by pixels (histogram, class shares, confidence), image
        shares by images, counts summed, throughput averaged."""
        pixels = np.array([r.pixels for r in runs], float)
        images = np.array([r.images for r in runs], float)

        def mean(values, weights):
            return float(np.average(values, weights=weights)) if weights.sum() else 0.0

        names = list(runs[0].class_share)
        return cls(class_share={n: mean([r.class_share.get(n, 0.0) for r in runs], pixels) for n in names},
                   class_images={n: mean([r.class_images.get(n, 0.0) for r in runs], images) for n in names},
                   confidence_histogram=[mean([r.confidence_histogram[k] for r in runs], pixels)
                                         for k in range(len(runs[0].confidence_histogram))],
                   mean_confidence=mean([r.mean_confidence for r in runs], pixels),
                   low_confidence_fraction=mean([r.low_confidence_fraction for r in runs], pixels),
                   mean_entropy=mean([r.mean_entropy for r in runs], pixels),
                   images=int(images.sum()), errors=sum(r.errors for r in runs), pixels=int(pixels.sum()),
                   images_per_s=float(np.mean([r.images_per_s for r in runs])),
                   settings={k: v for k, v in runs[0].settings.items()
                             if all(r.settings.get(k) == v for r in runs)})


def jensen_shannon(p, q) -> float:
    """Jensen–Shannon divergence of two distributions, base 2: 0 for equal ones, 1 for disjoint ones."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    p, q = p / max(p.sum(), 1e-12), q / max(q.sum(), 1e-12)
    m = (p + q) / 2

    def kl(a):
        nonzero = a > 0
        return float(np.sum(a[nonzero] * np.log2(a[nonzero] / m[nonzero])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def population_stability(expected, actual) -> float:
    """Population stability index Σ (a − e) ln(a / e) over the bins (shares clipped at 1e-4): under 0.1
    stable, 0.1–0.25 a moderate shift, over 0.25 a large one, by the usual reading."""
    e = np.clip(np.asarray(expected, float), _EPS, None)
    a = np.clip(np.asarray(actual, float), _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def compare_distributions(current: Distributions, reference: Distributions, thresholds: dict | None = None) -> dict:
    """The report of `pipelines.monitor`: per-class shares and their change, the divergences, error
    rate and throughput against the reference, classes that appeared or vanished (in no image of one
    side, in some of the other), the settings that differ, and which thresholds were crossed."""
    limits = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    names = list(current.class_share)
    js = jensen_shannon([current.class_share[n] for n in names], [reference.class_share.get(n, 0.0) for n in names])
    psi = population_stability(reference.confidence_histogram, current.confidence_histogram)
    crossed = [f"Jensen–Shannon divergence of the class shares {js:.4f} > {limits['max_js']}"] if js > limits["max_js"] else []
    if psi > limits["max_psi"]:
        crossed.append(f"population stability index of the confidence histogram {psi:.3f} > {limits['max_psi']}")
    if current.error_rate > limits["max_error_rate"]:
        crossed.append(f"error rate {current.error_rate:.3f} > {limits['max_error_rate']}")
    return {
        "classes": [{"class": n, "share": current.class_share[n], "reference": reference.class_share.get(n, 0.0),
                     "change": current.class_share[n] - reference.class_share.get(n, 0.0),
                     "images": current.class_images.get(n, 0.0), "reference_images": reference.class_images.get(n, 0.0)}
                    for n in names],
        "js_divergence": js, "psi": psi,
        "mean_confidence": current.mean_confidence, "reference_mean_confidence": reference.mean_confidence,
        "error_rate": current.error_rate, "reference_error_rate": reference.error_rate,
        "error_rate_change": current.error_rate - reference.error_rate,
        "images_per_s": current.images_per_s, "reference_images_per_s": reference.images_per_s,
        "throughput_ratio": current.images_per_s / reference.images_per_s if reference.images_per_s else None,
        "appeared": [n for n in names if current.class_images.get(n, 0) > 0 and not reference.class_images.get(n, 0)],
        "vanished": [n for n in names if reference.class_images.get(n, 0) > 0 and not current.class_images.get(n, 0)],
        "settings_changed": {k: (reference.settings.get(k), v) for k, v in current.settings.items()
                             if reference.settings.get(k) != v},
        "thresholds": limits, "crossed": crossed,
    }
