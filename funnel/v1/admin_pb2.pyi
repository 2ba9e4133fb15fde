from funnel.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutState(_message.Message):
    __slots__ = ("stable_release_id", "candidate_release_id", "candidate_fraction")
    STABLE_RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    stable_release_id: str
    candidate_release_id: str
    candidate_fraction: float
    def __init__(self, stable_release_id: _Optional[str] = ..., candidate_release_id: _Optional[str] = ..., candidate_fraction: _Optional[float] = ...) -> None: ...

class ServiceReleases(_message.Message):
    __slots__ = ("service", "target", "releases", "error")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    service: str
    target: str
    releases: _containers.RepeatedCompositeFieldContainer[_common_pb2.ReleaseStatus]
    error: str
    def __init__(self, service: _Optional[str] = ..., target: _Optional[str] = ..., releases: _Optional[_Iterable[_Union[_common_pb2.ReleaseStatus, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class GetRolloutStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRolloutStatusResponse(_message.Message):
    __slots__ = ("rollout", "services", "published_release_ids")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_RELEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    rollout: RolloutState
    services: _containers.RepeatedCompositeFieldContainer[ServiceReleases]
    published_release_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rollout: _Optional[_Union[RolloutState, _Mapping]] = ..., services: _Optional[_Iterable[_Union[ServiceReleases, _Mapping]]] = ..., published_release_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("release_id", "fraction")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    fraction: float
    def __init__(self, release_id: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class StartRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: RolloutState
    def __init__(self, rollout: _Optional[_Union[RolloutState, _Mapping]] = ...) -> None: ...

class SetCandidateFractionRequest(_message.Message):
    __slots__ = ("fraction",)
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    def __init__(self, fraction: _Optional[float] = ...) -> None: ...

class SetCandidateFractionResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: RolloutState
    def __init__(self, rollout: _Optional[_Union[RolloutState, _Mapping]] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("release_id",)
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    def __init__(self, release_id: _Optional[str] = ...) -> None: ...

class PromoteResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: RolloutState
    def __init__(self, rollout: _Optional[_Union[RolloutState, _Mapping]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: RolloutState
    def __init__(self, rollout: _Optional[_Union[RolloutState, _Mapping]] = ...) -> None: ...
