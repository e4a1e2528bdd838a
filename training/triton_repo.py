"""Triton's side of an export: `config.pbtxt` text and the Python-backend variant.

The layout, file names and tensor names are the contract in `vaecore.repository`; this module only writes what
Triton itself reads. The Python-backend variant uses the same tensor names, so a client never needs to know
which backend serves it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from vaecore.repository import MODEL_FILE, VERSION, NetworkSpec, TensorSpec, network_dir, version_order

Variant = Literal["libtorch", "python"]
InstanceKind = Literal["KIND_GPU", "KIND_CPU"]


def _tensor_block(key: str, tensors: tuple[TensorSpec, ...]) -> str:
    entries = ",\n".join(
        f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {", ".join(map(str, t.dims))} ]\n  }}'
        for t in tensors
    )
    return f"{key} [\n{entries}\n]\n"


def config_pbtxt(
    spec: NetworkSpec,
    variant: Variant,
    max_batch_size: int,
    instance_kind: InstanceKind,
    max_queue_delay_us: int = 500,
    instance_count: int = 1,
) -> str:
    """config.pbtxt text: platform/backend, batching, tensors, instance group."""
    header = 'platform: "pytorch_libtorch"\n' if variant == "libtorch" else 'backend: "python"\n'
    preferred = sorted({s for s in (8, 32, max_batch_size) if s <= max_batch_size})
    text = (
        f'name: "{spec.name}"\n{header}max_batch_size: {max_batch_size}\n'
        + _tensor_block("input", spec.inputs)
        + _tensor_block("output", spec.outputs)
        + "dynamic_batching {\n"
        + f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        + f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        + f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {instance_kind}\n  }}\n]\n"
    )
    if variant == "libtorch":
        # Inference mode and no JIT profiling: steady latency from the first request on.
        text += (
            'parameters: { key: "INFERENCE_MODE" value: { string_value: "true" } }\n'
            'parameters: { key: "DISABLE_OPTIMIZED_EXECUTION" value: { string_value: "false" } }\n'
        )
    return text


PYTHON_BACKEND_MODEL = '''"""Triton Python-backend model: runs the TorchScript file beside it, written by the exporter.

For servers without the libtorch backend. Requests of one dynamic batch are concatenated, run in one
forward pass, and split back, one response per request, in order.
"""

import json
import os
import sys

# The stub's embedded interpreter ignores PYTHONPATH; honour it (ahead of the interpreter's own site-packages,
# as PYTHONPATH normally is) so torch and a matching numpy come from the serving environment.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        threads = config.get("parameters", {}).get("TORCH_THREADS", {}).get("string_value", "1")
        torch.set_num_threads(int(threads))
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.module = torch.jit.load(path, map_location="cpu").eval()

    def execute(self, requests):
        per_request = [
            [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names]
            for request in requests
        ]
        sizes = [arrays[0].shape[0] for arrays in per_request]
        inputs = [
            torch.from_numpy(np.ascontiguousarray(np.concatenate([arrays[i] for arrays in per_request])))
            for i in range(len(self.input_names))
        ]
        with torch.inference_mode():
            outputs = self.module(*inputs)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        responses, offset = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(output[offset : offset + size].numpy()))
                for name, output in zip(self.output_names, outputs)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            offset += size
        return responses
'''


VERSION_POLICY = "version_policy:"


def version_policy(versions: Iterable[str]) -> str:
    """The config line that makes Triton serve exactly these versions: the ones the metadata lists."""
    listed = ", ".join(sorted(set(versions), key=version_order))
    return f"{VERSION_POLICY} {{ specific: {{ versions: [ {listed} ] }} }}\n"


def set_version_policy(model_dir: Path, versions: Iterable[str]) -> None:
    """Rewrite the `version_policy` line of `model_dir/config.pbtxt` (whatever its backend), keeping the rest."""
    path = model_dir / "config.pbtxt"
    lines = [line for line in path.read_text().splitlines(keepends=True) if not line.startswith(VERSION_POLICY)]
    path.write_text("".join(lines) + version_policy(versions))


def write_model(
    repo: Path,
    spec: NetworkSpec,
    torchscript_file: Path,
    variant: Variant,
    max_batch_size: int,
    instance_kind: InstanceKind,
    version: str = VERSION,
    versions: Iterable[str] = (VERSION,),
) -> Path:
    """Lay out `repo/<name>/config.pbtxt` (serving `versions`) and `repo/<name>/<version>/model.pt` (+ `model.py`
    for the Python backend)."""
    model_dir = network_dir(repo, spec)
    version_dir = model_dir / version
    version_dir.mkdir(parents=True, exist_ok=True)
    if torchscript_file.resolve() != (version_dir / MODEL_FILE).resolve():
        shutil.copyfile(torchscript_file, version_dir / MODEL_FILE)
    config = config_pbtxt(spec, variant, max_batch_size, instance_kind)
    if variant == "python":
        config += 'parameters: { key: "TORCH_THREADS" value: { string_value: "1" } }\n'
        (version_dir / "model.py").write_text(PYTHON_BACKEND_MODEL)
    (model_dir / "config.pbtxt").write_text(config + version_policy([*versions, version]))
    return model_dir
