from funnel.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("user", "k", "release_id", "exclude_seen", "num_candidates")
    USER_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    user: _common_pb2.UserContext
    k: int
    release_id: str
    exclude_seen: bool
    num_candidates: int
    def __init__(self, user: _Optional[_Union[_common_pb2.UserContext, _Mapping]] = ..., k: _Optional[int] = ..., release_id: _Optional[str] = ..., exclude_seen: _Optional[bool] = ..., num_candidates: _Optional[int] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "title", "score", "retrieval_score", "year", "genres", "predicted_rating")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    YEAR_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_RATING_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    title: str
    score: float
    retrieval_score: float
    year: int
    genres: _containers.RepeatedScalarFieldContainer[str]
    predicted_rating: float
    def __init__(self, item_id: _Optional[int] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., retrieval_score: _Optional[float] = ..., year: _Optional[int] = ..., genres: _Optional[_Iterable[str]] = ..., predicted_rating: _Optional[float] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("retrieval_ms", "ranking_ms", "total_ms")
    RETRIEVAL_MS_FIELD_NUMBER: _ClassVar[int]
    RANKING_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    retrieval_ms: float
    ranking_ms: float
    total_ms: float
    def __init__(self, retrieval_ms: _Optional[float] = ..., ranking_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("release_id", "items", "retrieval_release_id", "ranking_release_id", "timings", "degraded", "degraded_reasons", "cold_start")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RANKING_RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    retrieval_release_id: str
    ranking_release_id: str
    timings: StageTimings
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[str]
    cold_start: bool
    def __init__(self, release_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., retrieval_release_id: _Optional[str] = ..., ranking_release_id: _Optional[str] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[str]] = ..., cold_start: _Optional[bool] = ...) -> None: ...
