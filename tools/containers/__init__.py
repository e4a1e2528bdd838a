"""Container images for real: the engine (podman, installed from Debian when missing), the base image (upstream,
or a stand-in made here), the host's pip configuration handed to the build, and the build itself with its size
report (`make image`, `python -m tools.containers.images`). The image tests build through the same code."""
