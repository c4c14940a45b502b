from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PluginInfo(_message.Message):
    __slots__ = ("name", "description", "params_schema_json", "outputs_schema_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    params_schema_json: str
    outputs_schema_json: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., params_schema_json: _Optional[str] = ..., outputs_schema_json: _Optional[str] = ...) -> None: ...

class AttemptRef(_message.Message):
    __slots__ = ("run_id", "step_id", "attempt")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    step_id: str
    attempt: int
    def __init__(self, run_id: _Optional[str] = ..., step_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("name", "labels", "plugins", "version", "running", "held", "batched_acks", "batched_starts")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    BATCHED_ACKS_FIELD_NUMBER: _ClassVar[int]
    BATCHED_STARTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    plugins: _containers.RepeatedCompositeFieldContainer[PluginInfo]
    version: str
    running: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    held: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    batched_acks: bool
    batched_starts: bool
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., plugins: _Optional[_Iterable[_Union[PluginInfo, _Mapping]]] = ..., version: _Optional[str] = ..., running: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., held: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., batched_acks: _Optional[bool] = ..., batched_starts: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("running", "draining")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    running: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    draining: bool
    def __init__(self, running: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., draining: _Optional[bool] = ...) -> None: ...

class StepStarted(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StepProgress(_message.Message):
    __slots__ = ("fraction", "message")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    message: str
    def __init__(self, fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class StepLog(_message.Message):
    __slots__ = ("level", "message")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    level: str
    message: str
    def __init__(self, level: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StepCompleted(_message.Message):
    __slots__ = ("outputs_json", "path")
    OUTPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    outputs_json: str
    path: str
    def __init__(self, outputs_json: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class StepFailed(_message.Message):
    __slots__ = ("error", "message", "retryable", "rolled_back", "details_json")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    error: str
    message: str
    retryable: bool
    rolled_back: bool
    details_json: str
    def __init__(self, error: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., rolled_back: _Optional[bool] = ..., details_json: _Optional[str] = ...) -> None: ...

class StepInterrupted(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class StepMessage(_message.Message):
    __slots__ = ("topic", "payload_json")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    topic: str
    payload_json: str
    def __init__(self, topic: _Optional[str] = ..., payload_json: _Optional[str] = ...) -> None: ...

class StepOutput(_message.Message):
    __slots__ = ("name", "value_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    value_json: str
    def __init__(self, name: _Optional[str] = ..., value_json: _Optional[str] = ...) -> None: ...

class ReceiveRequest(_message.Message):
    __slots__ = ("topic", "after_index")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    AFTER_INDEX_FIELD_NUMBER: _ClassVar[int]
    topic: str
    after_index: int
    def __init__(self, topic: _Optional[str] = ..., after_index: _Optional[int] = ...) -> None: ...

class StepEvent(_message.Message):
    __slots__ = ("ref", "started", "progress", "log", "completed", "failed", "interrupted", "message", "output", "receive", "implies_started")
    REF_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_FIELD_NUMBER: _ClassVar[int]
    IMPLIES_STARTED_FIELD_NUMBER: _ClassVar[int]
    ref: AttemptRef
    started: StepStarted
    progress: StepProgress
    log: StepLog
    completed: StepCompleted
    failed: StepFailed
    interrupted: StepInterrupted
    message: StepMessage
    output: StepOutput
    receive: ReceiveRequest
    implies_started: bool
    def __init__(self, ref: _Optional[_Union[AttemptRef, _Mapping]] = ..., started: _Optional[_Union[StepStarted, _Mapping]] = ..., progress: _Optional[_Union[StepProgress, _Mapping]] = ..., log: _Optional[_Union[StepLog, _Mapping]] = ..., completed: _Optional[_Union[StepCompleted, _Mapping]] = ..., failed: _Optional[_Union[StepFailed, _Mapping]] = ..., interrupted: _Optional[_Union[StepInterrupted, _Mapping]] = ..., message: _Optional[_Union[StepMessage, _Mapping]] = ..., output: _Optional[_Union[StepOutput, _Mapping]] = ..., receive: _Optional[_Union[ReceiveRequest, _Mapping]] = ..., implies_started: _Optional[bool] = ...) -> None: ...

class StepEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[StepEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[StepEvent, _Mapping]]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "step", "heartbeat", "steps")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    step: StepEvent
    heartbeat: Heartbeat
    steps: StepEvents
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., step: _Optional[_Union[StepEvent, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., steps: _Optional[_Union[StepEvents, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("coordinator_version", "heartbeat_interval_s", "max_message_bytes", "batched_events")
    COORDINATOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BATCHED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    coordinator_version: str
    heartbeat_interval_s: float
    max_message_bytes: int
    batched_events: bool
    def __init__(self, coordinator_version: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., max_message_bytes: _Optional[int] = ..., batched_events: _Optional[bool] = ...) -> None: ...

class StartStep(_message.Message):
    __slots__ = ("ref", "task", "params_json", "config_json", "rollback_on_failure", "acks")
    REF_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    ref: AttemptRef
    task: str
    params_json: str
    config_json: str
    rollback_on_failure: bool
    acks: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    def __init__(self, ref: _Optional[_Union[AttemptRef, _Mapping]] = ..., task: _Optional[str] = ..., params_json: _Optional[str] = ..., config_json: _Optional[str] = ..., rollback_on_failure: _Optional[bool] = ..., acks: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ...) -> None: ...

class CancelStep(_message.Message):
    __slots__ = ("ref", "reason", "rollback")
    REF_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    ref: AttemptRef
    reason: str
    rollback: bool
    def __init__(self, ref: _Optional[_Union[AttemptRef, _Mapping]] = ..., reason: _Optional[str] = ..., rollback: _Optional[bool] = ...) -> None: ...

class ResultAck(_message.Message):
    __slots__ = ("ref", "more")
    REF_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    ref: AttemptRef
    more: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    def __init__(self, ref: _Optional[_Union[AttemptRef, _Mapping]] = ..., more: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ConfigUpdate(_message.Message):
    __slots__ = ("run_id", "config_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    config_json: str
    def __init__(self, run_id: _Optional[str] = ..., config_json: _Optional[str] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("ref", "topic", "index", "payload_json")
    REF_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    ref: AttemptRef
    topic: str
    index: int
    payload_json: str
    def __init__(self, ref: _Optional[_Union[AttemptRef, _Mapping]] = ..., topic: _Optional[str] = ..., index: _Optional[int] = ..., payload_json: _Optional[str] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("welcome", "start", "cancel", "ack", "reject", "config", "delivery", "starts")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    STARTS_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    start: StartStep
    cancel: CancelStep
    ack: ResultAck
    reject: Reject
    config: ConfigUpdate
    delivery: Delivery
    starts: StartSteps
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., start: _Optional[_Union[StartStep, _Mapping]] = ..., cancel: _Optional[_Union[CancelStep, _Mapping]] = ..., ack: _Optional[_Union[ResultAck, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ..., config: _Optional[_Union[ConfigUpdate, _Mapping]] = ..., delivery: _Optional[_Union[Delivery, _Mapping]] = ..., starts: _Optional[_Union[StartSteps, _Mapping]] = ...) -> None: ...

class StartSteps(_message.Message):
    __slots__ = ("starts",)
    STARTS_FIELD_NUMBER: _ClassVar[int]
    starts: _containers.RepeatedCompositeFieldContainer[StartStep]
    def __init__(self, starts: _Optional[_Iterable[_Union[StartStep, _Mapping]]] = ...) -> None: ...

class DefinitionSource(_message.Message):
    __slots__ = ("yaml", "filename")
    YAML_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    yaml: str
    filename: str
    def __init__(self, yaml: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class DefinitionIssue(_message.Message):
    __slots__ = ("filename", "line", "column", "field", "message")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    filename: str
    line: int
    column: int
    field: str
    message: str
    def __init__(self, filename: _Optional[str] = ..., line: _Optional[int] = ..., column: _Optional[int] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ValidateRequest(_message.Message):
    __slots__ = ("source", "inputs")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    source: DefinitionSource
    inputs: _containers.ScalarMap[str, str]
    def __init__(self, source: _Optional[_Union[DefinitionSource, _Mapping]] = ..., inputs: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ValidateResponse(_message.Message):
    __slots__ = ("issues", "name", "step_ids")
    ISSUES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_IDS_FIELD_NUMBER: _ClassVar[int]
    issues: _containers.RepeatedCompositeFieldContainer[DefinitionIssue]
    name: str
    step_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, issues: _Optional[_Iterable[_Union[DefinitionIssue, _Mapping]]] = ..., name: _Optional[str] = ..., step_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("source", "inputs", "idempotency_key")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    source: DefinitionSource
    inputs: _containers.ScalarMap[str, str]
    idempotency_key: str
    def __init__(self, source: _Optional[_Union[DefinitionSource, _Mapping]] = ..., inputs: _Optional[_Mapping[str, str]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("run_id", "existing")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    existing: bool
    def __init__(self, run_id: _Optional[str] = ..., existing: _Optional[bool] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class StepDetail(_message.Message):
    __slots__ = ("step_id", "task", "target", "status", "attempt", "agent", "waiting_reason", "error", "outputs_json", "started_ms", "finished_ms")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    task: str
    target: str
    status: str
    attempt: int
    agent: str
    waiting_reason: str
    error: str
    outputs_json: str
    started_ms: int
    finished_ms: int
    def __init__(self, step_id: _Optional[str] = ..., task: _Optional[str] = ..., target: _Optional[str] = ..., status: _Optional[str] = ..., attempt: _Optional[int] = ..., agent: _Optional[str] = ..., waiting_reason: _Optional[str] = ..., error: _Optional[str] = ..., outputs_json: _Optional[str] = ..., started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ...) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("run_id", "name", "status", "created_ms", "updated_ms")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    name: str
    status: str
    created_ms: int
    updated_ms: int
    def __init__(self, run_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., created_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ...) -> None: ...

class RunDetail(_message.Message):
    __slots__ = ("summary", "inputs_json", "config_json", "steps", "error")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    summary: RunSummary
    inputs_json: str
    config_json: str
    steps: _containers.RepeatedCompositeFieldContainer[StepDetail]
    error: str
    def __init__(self, summary: _Optional[_Union[RunSummary, _Mapping]] = ..., inputs_json: _Optional[str] = ..., config_json: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepDetail, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit", "before_run_id")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    limit: int
    before_run_id: str
    def __init__(self, limit: _Optional[int] = ..., before_run_id: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ...) -> None: ...

class TailRequest(_message.Message):
    __slots__ = ("run_id", "after_seq", "follow")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_seq: int
    follow: bool
    def __init__(self, run_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("run_id", "seq", "time_ms", "type", "step_id", "attempt", "agent", "data_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    seq: int
    time_ms: int
    type: str
    step_id: str
    attempt: int
    agent: str
    data_json: str
    def __init__(self, run_id: _Optional[str] = ..., seq: _Optional[int] = ..., time_ms: _Optional[int] = ..., type: _Optional[str] = ..., step_id: _Optional[str] = ..., attempt: _Optional[int] = ..., agent: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("name", "labels", "plugins", "connected", "last_seen_ms", "version", "running")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    plugins: _containers.RepeatedScalarFieldContainer[str]
    connected: bool
    last_seen_ms: int
    version: str
    running: int
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., plugins: _Optional[_Iterable[str]] = ..., connected: _Optional[bool] = ..., last_seen_ms: _Optional[int] = ..., version: _Optional[str] = ..., running: _Optional[int] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("run_id", "from_step")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    from_step: str
    def __init__(self, run_id: _Optional[str] = ..., from_step: _Optional[str] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("run_id", "rerun_steps")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RERUN_STEPS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    rerun_steps: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., rerun_steps: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateConfigRequest(_message.Message):
    __slots__ = ("run_id", "key", "value_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    key: str
    value_json: str
    def __init__(self, run_id: _Optional[str] = ..., key: _Optional[str] = ..., value_json: _Optional[str] = ...) -> None: ...

class UpdateConfigResponse(_message.Message):
    __slots__ = ("config_json",)
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    def __init__(self, config_json: _Optional[str] = ...) -> None: ...

class SignalRequest(_message.Message):
    __slots__ = ("run_id", "name", "payload_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    name: str
    payload_json: str
    def __init__(self, run_id: _Optional[str] = ..., name: _Optional[str] = ..., payload_json: _Optional[str] = ...) -> None: ...

class SignalResponse(_message.Message):
    __slots__ = ("waiting_steps",)
    WAITING_STEPS_FIELD_NUMBER: _ClassVar[int]
    waiting_steps: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, waiting_steps: _Optional[_Iterable[str]] = ...) -> None: ...

class PruneRunsRequest(_message.Message):
    __slots__ = ("older_than_s",)
    OLDER_THAN_S_FIELD_NUMBER: _ClassVar[int]
    older_than_s: float
    def __init__(self, older_than_s: _Optional[float] = ...) -> None: ...

class PruneRunsResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...
