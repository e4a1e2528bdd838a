from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ElementType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ELEMENT_TYPE_UNSPECIFIED: _ClassVar[ElementType]
    ELEMENT_TYPE_FLOAT32: _ClassVar[ElementType]
    ELEMENT_TYPE_UINT8: _ClassVar[ElementType]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_FLOAT32: _ClassVar[ImageFormat]
    IMAGE_FORMAT_UINT8: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]

class DecodeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECODE_MODE_UNSPECIFIED: _ClassVar[DecodeMode]
    DECODE_MODE_MEAN: _ClassVar[DecodeMode]
    DECODE_MODE_SAMPLE: _ClassVar[DecodeMode]

class InterpolationMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERPOLATION_METHOD_UNSPECIFIED: _ClassVar[InterpolationMethod]
    INTERPOLATION_METHOD_LINEAR: _ClassVar[InterpolationMethod]
    INTERPOLATION_METHOD_SPHERICAL: _ClassVar[InterpolationMethod]

class VersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_STATE_UNSPECIFIED: _ClassVar[VersionState]
    VERSION_STATE_LOADING: _ClassVar[VersionState]
    VERSION_STATE_READY: _ClassVar[VersionState]
    VERSION_STATE_FAILED: _ClassVar[VersionState]
    VERSION_STATE_DRAINING: _ClassVar[VersionState]
    VERSION_STATE_UNLOADED: _ClassVar[VersionState]
ELEMENT_TYPE_UNSPECIFIED: ElementType
ELEMENT_TYPE_FLOAT32: ElementType
ELEMENT_TYPE_UINT8: ElementType
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_FLOAT32: ImageFormat
IMAGE_FORMAT_UINT8: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
DECODE_MODE_UNSPECIFIED: DecodeMode
DECODE_MODE_MEAN: DecodeMode
DECODE_MODE_SAMPLE: DecodeMode
INTERPOLATION_METHOD_UNSPECIFIED: InterpolationMethod
INTERPOLATION_METHOD_LINEAR: InterpolationMethod
INTERPOLATION_METHOD_SPHERICAL: InterpolationMethod
VERSION_STATE_UNSPECIFIED: VersionState
VERSION_STATE_LOADING: VersionState
VERSION_STATE_READY: VersionState
VERSION_STATE_FAILED: VersionState
VERSION_STATE_DRAINING: VersionState
VERSION_STATE_UNLOADED: VersionState

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: ElementType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[ElementType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PngImages(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Images(_message.Message):
    __slots__ = ("tensor", "png")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    tensor: Tensor
    png: PngImages
    def __init__(self, tensor: _Optional[_Union[Tensor, _Mapping]] = ..., png: _Optional[_Union[PngImages, _Mapping]] = ...) -> None: ...

class Seed(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: int
    def __init__(self, value: _Optional[int] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("format", "mode")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    format: ImageFormat
    mode: DecodeMode
    def __init__(self, format: _Optional[_Union[ImageFormat, str]] = ..., mode: _Optional[_Union[DecodeMode, str]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: ModelInfo
    def __init__(self, info: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "latent_dim", "image_shape", "likelihood", "attribute_names", "label_names", "dataset", "test_nll", "test_nll_samples", "backend", "version", "default_version", "versions", "latent_space")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_NAMES_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TEST_NLL_FIELD_NUMBER: _ClassVar[int]
    TEST_NLL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    latent_dim: int
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    likelihood: str
    attribute_names: _containers.RepeatedScalarFieldContainer[str]
    label_names: _containers.RepeatedScalarFieldContainer[str]
    dataset: str
    test_nll: float
    test_nll_samples: int
    backend: str
    version: str
    default_version: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    latent_space: str
    def __init__(self, name: _Optional[str] = ..., latent_dim: _Optional[int] = ..., image_shape: _Optional[_Iterable[int]] = ..., likelihood: _Optional[str] = ..., attribute_names: _Optional[_Iterable[str]] = ..., label_names: _Optional[_Iterable[str]] = ..., dataset: _Optional[str] = ..., test_nll: _Optional[float] = ..., test_nll_samples: _Optional[int] = ..., backend: _Optional[str] = ..., version: _Optional[str] = ..., default_version: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., latent_space: _Optional[str] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("model", "images", "samples_per_image", "seed", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: Images
    samples_per_image: int
    seed: Seed
    model_version: str
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., samples_per_image: _Optional[int] = ..., seed: _Optional[_Union[Seed, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("mean", "log_variance", "samples", "seed", "model", "model_version", "latent_space")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOG_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    mean: Tensor
    log_variance: Tensor
    samples: Tensor
    seed: int
    model: str
    model_version: str
    latent_space: str
    def __init__(self, mean: _Optional[_Union[Tensor, _Mapping]] = ..., log_variance: _Optional[_Union[Tensor, _Mapping]] = ..., samples: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., latent_space: _Optional[str] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("model", "latents", "output", "seed", "model_version", "latent_space")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    model: str
    latents: Tensor
    output: OutputOptions
    seed: Seed
    model_version: str
    latent_space: str
    def __init__(self, model: _Optional[str] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., seed: _Optional[_Union[Seed, _Mapping]] = ..., model_version: _Optional[str] = ..., latent_space: _Optional[str] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("images", "seed", "model", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Images
    seed: int
    model: str
    model_version: str
    def __init__(self, images: _Optional[_Union[Images, _Mapping]] = ..., seed: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("model", "images", "sample_latent", "output", "seed", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_LATENT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: Images
    sample_latent: bool
    output: OutputOptions
    seed: Seed
    model_version: str
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., sample_latent: _Optional[bool] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., seed: _Optional[_Union[Seed, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("images", "latents", "seed", "model", "model_version", "latent_space")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    images: Images
    latents: Tensor
    seed: int
    model: str
    model_version: str
    latent_space: str
    def __init__(self, images: _Optional[_Union[Images, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., latent_space: _Optional[str] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("model", "n", "temperature", "output", "seed", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    n: int
    temperature: float
    output: OutputOptions
    seed: Seed
    model_version: str
    def __init__(self, model: _Optional[str] = ..., n: _Optional[int] = ..., temperature: _Optional[float] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., seed: _Optional[_Union[Seed, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("images", "latents", "seed", "model", "model_version", "latent_space")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    images: Images
    latents: Tensor
    seed: int
    model: str
    model_version: str
    latent_space: str
    def __init__(self, images: _Optional[_Union[Images, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., latent_space: _Optional[str] = ...) -> None: ...

class SampleStreamRequest(_message.Message):
    __slots__ = ("model", "n", "temperature", "output", "seed", "chunk_size", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    n: int
    temperature: float
    output: OutputOptions
    seed: Seed
    chunk_size: int
    model_version: str
    def __init__(self, model: _Optional[str] = ..., n: _Optional[int] = ..., temperature: _Optional[float] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., seed: _Optional[_Union[Seed, _Mapping]] = ..., chunk_size: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class SampleStreamResponse(_message.Message):
    __slots__ = ("images", "latents", "offset", "seed", "model", "model_version", "latent_space")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    images: Images
    latents: Tensor
    offset: int
    seed: int
    model: str
    model_version: str
    latent_space: str
    def __init__(self, images: _Optional[_Union[Images, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., offset: _Optional[int] = ..., seed: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., latent_space: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("image", "latent", "attribute", "latent_space")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    image: Images
    latent: Tensor
    attribute: str
    latent_space: str
    def __init__(self, image: _Optional[_Union[Images, _Mapping]] = ..., latent: _Optional[_Union[Tensor, _Mapping]] = ..., attribute: _Optional[str] = ..., latent_space: _Optional[str] = ...) -> None: ...

class InterpolateRequest(_message.Message):
    __slots__ = ("model", "start", "end", "steps", "method", "output", "seed", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    start: Endpoint
    end: Endpoint
    steps: int
    method: InterpolationMethod
    output: OutputOptions
    seed: Seed
    model_version: str
    def __init__(self, model: _Optional[str] = ..., start: _Optional[_Union[Endpoint, _Mapping]] = ..., end: _Optional[_Union[Endpoint, _Mapping]] = ..., steps: _Optional[int] = ..., method: _Optional[_Union[InterpolationMethod, str]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., seed: _Optional[_Union[Seed, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class InterpolateResponse(_message.Message):
    __slots__ = ("images", "latents", "seed", "model", "model_version", "latent_space")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    images: Images
    latents: Tensor
    seed: int
    model: str
    model_version: str
    latent_space: str
    def __init__(self, images: _Optional[_Union[Images, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., latent_space: _Optional[str] = ...) -> None: ...

class Term(_message.Message):
    __slots__ = ("weight", "value")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    weight: float
    value: Endpoint
    def __init__(self, weight: _Optional[float] = ..., value: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class ArithmeticRequest(_message.Message):
    __slots__ = ("model", "terms", "output", "seed", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    terms: _containers.RepeatedCompositeFieldContainer[Term]
    output: OutputOptions
    seed: Seed
    model_version: str
    def __init__(self, model: _Optional[str] = ..., terms: _Optional[_Iterable[_Union[Term, _Mapping]]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., seed: _Optional[_Union[Seed, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ArithmeticResponse(_message.Message):
    __slots__ = ("images", "latent", "seed", "model", "model_version", "latent_space")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    images: Images
    latent: Tensor
    seed: int
    model: str
    model_version: str
    latent_space: str
    def __init__(self, images: _Optional[_Union[Images, _Mapping]] = ..., latent: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., latent_space: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model", "images", "importance_samples", "seed", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: Images
    importance_samples: int
    seed: Seed
    model_version: str
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., importance_samples: _Optional[int] = ..., seed: _Optional[_Union[Seed, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ImageScore(_message.Message):
    __slots__ = ("elbo", "reconstruction", "kl", "log_likelihood")
    ELBO_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    LOG_LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    elbo: float
    reconstruction: float
    kl: float
    log_likelihood: float
    def __init__(self, elbo: _Optional[float] = ..., reconstruction: _Optional[float] = ..., kl: _Optional[float] = ..., log_likelihood: _Optional[float] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "importance_samples", "seed", "model", "model_version")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[ImageScore]
    importance_samples: int
    seed: int
    model: str
    model_version: str
    def __init__(self, scores: _Optional[_Iterable[_Union[ImageScore, _Mapping]]] = ..., importance_samples: _Optional[int] = ..., seed: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "state", "latent_space", "traffic_share", "message", "test_nll")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_SHARE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TEST_NLL_FIELD_NUMBER: _ClassVar[int]
    version: str
    state: VersionState
    latent_space: str
    traffic_share: float
    message: str
    test_nll: float
    def __init__(self, version: _Optional[str] = ..., state: _Optional[_Union[VersionState, str]] = ..., latent_space: _Optional[str] = ..., traffic_share: _Optional[float] = ..., message: _Optional[str] = ..., test_nll: _Optional[float] = ...) -> None: ...
