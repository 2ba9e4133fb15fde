from funnel.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetrieveRequest(_message.Message):
    __slots__ = ("release_id", "user", "num_candidates", "exclude_seen")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    user: _common_pb2.UserContext
    num_candidates: int
    exclude_seen: bool
    def __init__(self, release_id: _Optional[str] = ..., user: _Optional[_Union[_common_pb2.UserContext, _Mapping]] = ..., num_candidates: _Optional[int] = ..., exclude_seen: _Optional[bool] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("release_id", "item_ids", "scores", "cold_start")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    cold_start: bool
    def __init__(self, release_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., cold_start: _Optional[bool] = ...) -> None: ...

class RetrieveQuery(_message.Message):
    __slots__ = ("user", "num_candidates", "exclude_seen")
    USER_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    user: _common_pb2.UserContext
    num_candidates: int
    exclude_seen: bool
    def __init__(self, user: _Optional[_Union[_common_pb2.UserContext, _Mapping]] = ..., num_candidates: _Optional[int] = ..., exclude_seen: _Optional[bool] = ...) -> None: ...

class RetrieveBatchRequest(_message.Message):
    __slots__ = ("release_id", "queries")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    queries: _containers.RepeatedCompositeFieldContainer[RetrieveQuery]
    def __init__(self, release_id: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[RetrieveQuery, _Mapping]]] = ...) -> None: ...

class RetrieveResult(_message.Message):
    __slots__ = ("item_ids", "scores", "cold_start")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    cold_start: bool
    def __init__(self, item_ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., cold_start: _Optional[bool] = ...) -> None: ...

class RetrieveBatchResponse(_message.Message):
    __slots__ = ("release_id", "results")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    results: _containers.RepeatedCompositeFieldContainer[RetrieveResult]
    def __init__(self, release_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[RetrieveResult, _Mapping]]] = ...) -> None: ...
