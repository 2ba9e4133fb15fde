from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReleaseState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELEASE_STATE_UNSPECIFIED: _ClassVar[ReleaseState]
    RELEASE_STATE_LOADING: _ClassVar[ReleaseState]
    RELEASE_STATE_READY: _ClassVar[ReleaseState]
    RELEASE_STATE_FAILED: _ClassVar[ReleaseState]
RELEASE_STATE_UNSPECIFIED: ReleaseState
RELEASE_STATE_LOADING: ReleaseState
RELEASE_STATE_READY: ReleaseState
RELEASE_STATE_FAILED: ReleaseState

class UserContext(_message.Message):
    __slots__ = ("user_id", "history_item_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    history_item_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, user_id: _Optional[str] = ..., history_item_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ReleaseStatus(_message.Message):
    __slots__ = ("release_id", "state_name", "error", "channels", "state")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_NAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    state_name: str
    error: str
    channels: _containers.RepeatedScalarFieldContainer[str]
    state: ReleaseState
    def __init__(self, release_id: _Optional[str] = ..., state_name: _Optional[str] = ..., error: _Optional[str] = ..., channels: _Optional[_Iterable[str]] = ..., state: _Optional[_Union[ReleaseState, str]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("service", "releases", "serving")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    service: str
    releases: _containers.RepeatedCompositeFieldContainer[ReleaseStatus]
    serving: bool
    def __init__(self, service: _Optional[str] = ..., releases: _Optional[_Iterable[_Union[ReleaseStatus, _Mapping]]] = ..., serving: _Optional[bool] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("releases",)
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    releases: _containers.RepeatedCompositeFieldContainer[ReleaseStatus]
    def __init__(self, releases: _Optional[_Iterable[_Union[ReleaseStatus, _Mapping]]] = ...) -> None: ...
