"""Attribute vectors from binary labels (CelebA's layout): directions, the points to start from, their names."""

from __future__ import annotations

import numpy as np
import torch

from training.attributes import binary_attributes, compute_attributes
from training.config import ModelConfig
from training.model import ConvVAE


def test_direction_is_mean_with_minus_mean_without_and_points_are_the_means() -> None:
    values = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [0, 1], [1, 0]], np.uint8)
    means = np.arange(12, dtype=np.float32).reshape(6, 2)
    found = {a.name: a for a in binary_attributes(means, values, ("Eyeglasses", "Male"), min_examples=2)}
    assert set(found) == {"Eyeglasses", "mean_Eyeglasses", "mean_not_Eyeglasses", "Male", "mean_Male",
                          "mean_Female", "mean"}  # fmt: skip
    glasses = values[:, 0] == 1
    np.testing.assert_allclose(found["Eyeglasses"].vector, means[glasses].mean(0) - means[~glasses].mean(0))
    np.testing.assert_allclose(found["mean_Female"].vector, means[values[:, 1] == 0].mean(0))
    np.testing.assert_allclose(found["mean"].vector, means.mean(0))
    # "a woman with glasses" = mean_Female + Eyeglasses
    assert (found["Eyeglasses"].positives, found["Eyeglasses"].negatives) == (3, 3)
    assert all(a.vector.dtype == np.float32 for a in found.values())


def test_attributes_with_too_few_examples_on_a_side_are_left_out() -> None:
    values = np.array([[1], [0], [0], [0]], np.uint8)
    assert binary_attributes(np.zeros((4, 3), np.float32), values, ("Bald",), min_examples=2) == []


def test_colour_images_get_label_and_binary_vectors_but_no_stroke_measures() -> None:
    model = ConvVAE(ModelConfig(latent_dim=3, hidden_channels=2, hidden_units=8, image_channels=3, image_size=16,
                                stages=2, likelihood="gaussian"))  # fmt: skip
    images = np.random.default_rng(0).random((12, 3, 16, 16), dtype=np.float32)
    labels = np.zeros(12, np.int64)
    plain = compute_attributes(model, images, torch.from_numpy(images), labels, ())
    assert plain == []
    values = (np.arange(12)[:, None] % 2).astype(np.uint8)
    named = {
        a.name for a in compute_attributes(model, images, torch.from_numpy(images), labels, (), values, ("Smiling",))
    }
    assert named == {"Smiling", "mean_Smiling", "mean_not_Smiling", "mean"}
