"""Attribute vectors for latent arithmetic, computed from the training set.

Each direction is a difference of mean posterior means: images that have a property minus those that don't.
- one per label ("class_3"): images of that label minus all other images;
- measurable image properties of single-channel stroke images ("thickness", "slant"): within each label, images
  above that label's median minus those below it, averaged over labels, so the vector moves the property and
  not the class;
- one per binary attribute (CelebA's `Eyeglasses`, `Male`, `Smiling`; the emoji set's `Woman`, `Glasses`,
  `Technologist`), named as the attribute: images with it minus images without it.

Binary attributes also give points to start from, since an Arithmetic term can only name a model attribute:
`mean_<A>` (mean latent of the images with A), `mean_not_<A>` (without A; for CelebA's `Male` and `Young` it is
named for the opposite, `mean_Female` and `mean_Old`), and `mean` (all images). "A woman with glasses" on
CelebA is then `mean_Female + Eyeglasses` (Arithmetic terms: attribute "mean_Female" weight 1, attribute
"Eyeglasses" weight 1); on the emoji set `mean_Woman + Glasses`, and "woman + technologist" is
`mean_Woman + Technologist`. Attributes with fewer than `MIN_EXAMPLES` images on either side are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from training.model import ConvVAE

MIN_EXAMPLES = 5  # images needed on each side of a binary attribute for its vector
OPPOSITES = {"Male": "Female", "Young": "Old"}  # CelebA's attributes whose absence has a name of its own


@dataclass(frozen=True)
class Attribute:
    name: str
    description: str
    vector: np.ndarray  # float32 [latent_dim]
    positives: int
    negatives: int

    def to_dict(self) -> dict[str, object]:
        return {
            "description": self.description,
            "vector": [round(float(v), 6) for v in self.vector],
            "positives": self.positives,
            "negatives": self.negatives,
        }


def stroke_thickness(images: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Mean stroke width per image: 2 * ink area / boundary length (a stroke of width w, length L has
    area w*L and about 2L boundary pixels). Boundary = ink pixels with a 4-neighbour that is background."""
    ink = images[:, 0] > threshold
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    interior = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    boundary = (ink & ~interior).sum(axis=(1, 2))
    area = ink.sum(axis=(1, 2))
    return 2.0 * area / np.maximum(boundary, 1)


def slant(images: np.ndarray) -> np.ndarray:
    """Shear of the ink from second-order central moments: positive when the top leans right."""
    weights = images[:, 0].astype(np.float64)
    h, w = weights.shape[1:]
    rows, cols = np.mgrid[0:h, 0:w]
    mass = np.maximum(weights.sum(axis=(1, 2)), 1e-8)
    mean_r = (weights * rows).sum(axis=(1, 2)) / mass
    mean_c = (weights * cols).sum(axis=(1, 2)) / mass
    dr = rows[None] - mean_r[:, None, None]
    dc = cols[None] - mean_c[:, None, None]
    mu11 = (weights * dr * dc).sum(axis=(1, 2)) / mass
    mu02 = np.maximum((weights * dr * dr).sum(axis=(1, 2)) / mass, 1e-8)
    return -mu11 / mu02  # rows grow downwards: a right lean has columns falling as rows rise


@torch.inference_mode()
def posterior_means(model: ConvVAE, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    return torch.cat([model.encoder(images[i : i + batch_size])[0] for i in range(0, len(images), batch_size)]).numpy()


def label_attributes(means: np.ndarray, labels: np.ndarray, label_names: tuple[str, ...]) -> list[Attribute]:
    out = []
    for index, name in enumerate(label_names):
        mask = labels == index
        if mask.all() or not mask.any():
            continue
        vector = means[mask].mean(0) - means[~mask].mean(0)
        out.append(
            Attribute(f"class_{name}", f"label {name!r} minus all other labels", vector.astype(np.float32),
                      int(mask.sum()), int((~mask).sum()))
        )  # fmt: skip
    return out


def property_attribute(
    name: str, description: str, values: np.ndarray, means: np.ndarray, labels: np.ndarray
) -> Attribute:
    """Within-label median split of `values`, mean-latent differences averaged over labels."""
    differences, positives, negatives = [], 0, 0
    for label in np.unique(labels):
        in_label = labels == label
        median = np.median(values[in_label])
        high, low = in_label & (values > median), in_label & (values <= median)
        if high.any() and low.any():
            differences.append(means[high].mean(0) - means[low].mean(0))
            positives, negatives = positives + int(high.sum()), negatives + int(low.sum())
    if not differences:
        raise ValueError(f"attribute {name!r}: no label has images on both sides of its median")
    return Attribute(name, description, np.mean(differences, axis=0).astype(np.float32), positives, negatives)


def binary_attributes(
    means: np.ndarray, values: np.ndarray, names: Sequence[str], min_examples: int = MIN_EXAMPLES
) -> list[Attribute]:
    """For each binary attribute with `min_examples` images on each side: the direction `<name>` (mean latent
    with minus without) and the points `mean_<name>` and `mean_not_<name>` (or `mean_<opposite>`); then the
    point `mean` of all images."""
    directions: list[Attribute] = []
    points: list[Attribute] = []
    for column, name in enumerate(names):
        mask = values[:, column].astype(bool)
        positives, negatives = int(mask.sum()), int((~mask).sum())
        if positives < min_examples or negatives < min_examples:
            continue
        with_mean, without_mean = means[mask].mean(0), means[~mask].mean(0)
        opposite = OPPOSITES.get(name)
        directions.append(Attribute(name, f"images with {name} minus images without (mean posterior means)",
                                    (with_mean - without_mean).astype(np.float32), positives, negatives))  # fmt: skip
        points.append(Attribute(f"mean_{name}", f"point: mean latent of the images with {name}",
                                with_mean.astype(np.float32), positives, 0))  # fmt: skip
        points.append(Attribute(f"mean_{opposite}" if opposite else f"mean_not_{name}",
                                f"point: mean latent of the images without {name}",
                                without_mean.astype(np.float32), negatives, 0))  # fmt: skip
    if directions:
        points.append(Attribute("mean", "point: mean latent of all images", means.mean(0).astype(np.float32),
                                len(means), 0))  # fmt: skip
    return directions + points


def compute_attributes(
    model: ConvVAE,
    images: np.ndarray,
    model_inputs: torch.Tensor,
    labels: np.ndarray,
    label_names: tuple[str, ...],
    attribute_values: np.ndarray | None = None,
    attribute_names: Sequence[str] = (),
) -> list[Attribute]:
    """`images` are the intensities (for measuring properties), `model_inputs` what the encoder sees.
    With `attribute_values` ([N, A] binary, CelebA's layout): label vectors and the binary attributes' ones;
    without: label vectors, and for single-channel images thickness and slant (MNIST)."""
    means = posterior_means(model, model_inputs)
    attributes = label_attributes(means, labels, label_names)
    if attribute_values is not None:
        return attributes + binary_attributes(means, attribute_values, attribute_names)
    if images.shape[1] != 1:
        return attributes
    attributes.append(
        property_attribute("thickness", "thicker strokes minus thinner (within-label median split)",
                           stroke_thickness(images), means, labels)
    )  # fmt: skip
    attributes.append(
        property_attribute("slant", "leaning right minus leaning left (within-label median split)",
                           slant(images), means, labels)
    )  # fmt: skip
    return attributes
