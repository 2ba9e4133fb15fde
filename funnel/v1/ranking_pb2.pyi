from funnel.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("release_id", "user", "item_ids")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    user: _common_pb2.UserContext
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, release_id: _Optional[str] = ..., user: _Optional[_Union[_common_pb2.UserContext, _Mapping]] = ..., item_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("release_id", "scores", "ratings")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    RATINGS_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    scores: _containers.RepeatedScalarFieldContainer[float]
    ratings: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, release_id: _Optional[str] = ..., scores: _Optional[_Iterable[float]] = ..., ratings: _Optional[_Iterable[float]] = ...) -> None: ...

class RankQuery(_message.Message):
    __slots__ = ("user", "item_ids")
    USER_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user: _common_pb2.UserContext
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, user: _Optional[_Union[_common_pb2.UserContext, _Mapping]] = ..., item_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RankBatchRequest(_message.Message):
    __slots__ = ("release_id", "queries")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    queries: _containers.RepeatedCompositeFieldContainer[RankQuery]
    def __init__(self, release_id: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[RankQuery, _Mapping]]] = ...) -> None: ...

class RankResult(_message.Message):
    __slots__ = ("scores", "ratings")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    RATINGS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    ratings: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., ratings: _Optional[_Iterable[float]] = ...) -> None: ...

class RankBatchResponse(_message.Message):
    __slots__ = ("release_id", "results")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    results: _containers.RepeatedCompositeFieldContainer[RankResult]
    def __init__(self, release_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[RankResult, _Mapping]]] = ...) -> None: ...
