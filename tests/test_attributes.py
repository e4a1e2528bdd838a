from __future__ import annotations

import numpy as np

from tests.datasets import stroke_images
from training.attributes import label_attributes, property_attribute, slant, stroke_thickness


def _line(width: int, shear: float = 0.0) -> np.ndarray:
    image = np.zeros((1, 1, 28, 28), np.float32)
    for row in range(4, 24):
        centre = round(14 + shear * (14 - row))
        image[0, 0, row, centre - width // 2 : centre - width // 2 + width] = 1.0
    return image


def test_thickness_grows_with_stroke_width() -> None:
    widths = [stroke_thickness(_line(w))[0] for w in (1, 3, 5)]
    assert widths[0] < widths[1] < widths[2]
    assert abs(widths[2] - 5) < 1.5


def test_slant_sign_follows_lean() -> None:
    right, upright, left = (slant(_line(2, s))[0] for s in (0.4, 0.0, -0.4))
    assert right > 0.2 and left < -0.2 and abs(upright) < 0.05


def test_property_attribute_is_within_label_difference() -> None:
    images, labels = stroke_images(400, seed=3)
    values = stroke_thickness(images[:, None])
    means = np.stack([values, np.zeros_like(values)], 1)  # a "latent" that is the property itself
    attribute = property_attribute("thickness", "", values, means, labels)
    assert attribute.vector[0] > 0 and attribute.vector[1] == 0
    assert attribute.positives + attribute.negatives == 400


def test_label_attribute_points_from_others_to_label() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    means = np.eye(3, dtype=np.float32)[labels]
    attributes = {a.name: a for a in label_attributes(means, labels, ("0", "1", "2"))}
    np.testing.assert_allclose(attributes["class_1"].vector, [-0.5, 1.0, -0.5])
