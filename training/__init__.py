"""Train, evaluate, picture and export a convolutional VAE (see README.md)."""
