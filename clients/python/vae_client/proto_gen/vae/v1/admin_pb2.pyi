from google.api import annotations_pb2 as _annotations_pb2
from vae_client.proto_gen.vae.v1 import vae_pb2 as _vae_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RepositoryIndexRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RepositoryIndexResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_vae_pb2.ModelInfo]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[_vae_pb2.ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("changes", "models")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedCompositeFieldContainer[_vae_pb2.ModelInfo]
    def __init__(self, changes: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[_Union[_vae_pb2.ModelInfo, _Mapping]]] = ...) -> None: ...

class LoadVersionRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class LoadVersionResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _vae_pb2.ModelInfo
    def __init__(self, info: _Optional[_Union[_vae_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class UnloadVersionRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class UnloadVersionResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _vae_pb2.ModelInfo
    def __init__(self, info: _Optional[_Union[_vae_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class SetDefaultVersionRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class SetDefaultVersionResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _vae_pb2.ModelInfo
    def __init__(self, info: _Optional[_Union[_vae_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class SetTrafficSplitRequest(_message.Message):
    __slots__ = ("model", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: _containers.ScalarMap[str, float]
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SetTrafficSplitResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _vae_pb2.ModelInfo
    def __init__(self, info: _Optional[_Union[_vae_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _vae_pb2.ModelInfo
    def __init__(self, info: _Optional[_Union[_vae_pb2.ModelInfo, _Mapping]] = ...) -> None: ...
