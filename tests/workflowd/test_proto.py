"""The wire contract: committed generated modules match the .proto, and stay light to import."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, text_format
from grpc_tools import protoc

from workflowd.rpc import workflow_pb2, workflow_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PROTO = PROTO_DIR / "workflowd" / "rpc" / "workflow.proto"


def compile_descriptor(
    include: Path, proto: Path, out: Path
) -> descriptor_pb2.FileDescriptorProto:
    """Compile a .proto with protoc to a FileDescriptorProto, without source info."""
    well_known = resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{include}",
            f"-I{well_known}",
            f"--descriptor_set_out={out}",
            str(proto),
        ]
    )
    assert status == 0, f"protoc failed on {proto}"
    (compiled,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return compiled


def committed_descriptor() -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(workflow_pb2.DESCRIPTOR.serialized_pb)


def _default_json_name(name: str) -> str:
    """protoc's lowerCamelCase of a field name: each '_' dropped, the next letter raised."""
    parts = name.split("_")
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


def _drop_default_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        if field.json_name == _default_json_name(field.name):
            field.ClearField("json_name")
    for nested in message.nested_type:
        _drop_default_json_names(nested)


def as_text(message: descriptor_pb2.FileDescriptorProto) -> str:
    """The descriptor as text, with the json_name protoc derives itself left out.

    --descriptor_set_out spells out every field's default json_name, while the
    generated module keeps only those set in the .proto.
    """
    normal = descriptor_pb2.FileDescriptorProto()
    normal.CopyFrom(message)
    for nested in normal.message_type:
        _drop_default_json_names(nested)
    return text_format.MessageToString(normal)


def test_generated_messages_match_the_proto(tmp_path):
    """workflow_pb2 was generated from the current workflow.proto (run `make proto` if not)."""
    compiled = compile_descriptor(PROTO_DIR, PROTO, tmp_path / "workflow.desc")

    assert compiled.name == "workflowd/rpc/workflow.proto"
    assert as_text(compiled) == as_text(committed_descriptor())


def test_an_edited_proto_is_detected(tmp_path):
    """A field added to the .proto makes its descriptor differ from the committed one."""
    edited = tmp_path / "proto" / "workflowd" / "rpc" / "workflow.proto"
    edited.parent.mkdir(parents=True)
    edited.write_text(
        PROTO.read_text().replace(
            "message AttemptRef {", "message AttemptRef {\n  string added_field = 99;", 1
        )
    )

    compiled = compile_descriptor(tmp_path / "proto", edited, tmp_path / "edited.desc")

    assert compiled.name == "workflowd/rpc/workflow.proto"
    assert as_text(compiled) != as_text(committed_descriptor())
    assert "added_field" in as_text(compiled)


class RecordingChannel:
    """Stands in for a grpc.Channel and records the methods a stub registers."""

    def __init__(self) -> None:
        self.methods: dict[str, tuple[str, object, object]] = {}

    def _register(self, kind: str):
        def register(path, request_serializer=None, response_deserializer=None, **_):
            self.methods[path] = (kind, request_serializer, response_deserializer)
            return path

        return register

    def __getattr__(self, kind: str):
        if kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._register(kind)
        raise AttributeError(kind)


def kind_of(method: descriptor_pb2.MethodDescriptorProto) -> str:
    return (
        f"{'stream' if method.client_streaming else 'unary'}_"
        f"{'stream' if method.server_streaming else 'unary'}"
    )


def message_class(type_name: str):
    return getattr(workflow_pb2, type_name.rsplit(".", 1)[-1])


def test_every_service_method_has_a_stub(tmp_path):
    """Each rpc of each service in the .proto has a stub, servicer method and registration."""
    compiled = compile_descriptor(PROTO_DIR, PROTO, tmp_path / "workflow.desc")
    assert [service.name for service in compiled.service] == ["AgentService", "ControlService"]

    for service in compiled.service:
        channel = RecordingChannel()
        stub = getattr(workflow_pb2_grpc, f"{service.name}Stub")(channel)
        servicer = getattr(workflow_pb2_grpc, f"{service.name}Servicer")
        assert callable(getattr(workflow_pb2_grpc, f"add_{service.name}Servicer_to_server"))

        expected = {}
        for method in service.method:
            path = f"/{compiled.package}.{service.name}/{method.name}"
            expected[path] = (
                kind_of(method),
                message_class(method.input_type).SerializeToString,
                message_class(method.output_type).FromString,
            )
            assert getattr(stub, method.name) == path
            assert callable(getattr(servicer, method.name))
        assert channel.methods == expected


def test_control_service_methods_are_the_documented_ones(tmp_path):
    """The control API offers exactly the calls workflowctl uses, with Tail streaming."""
    compiled = compile_descriptor(PROTO_DIR, PROTO, tmp_path / "workflow.desc")
    (control,) = [s for s in compiled.service if s.name == "ControlService"]

    assert {m.name: kind_of(m) for m in control.method} == {
        "Validate": "unary_unary",
        "Submit": "unary_unary",
        "GetRun": "unary_unary",
        "ListRuns": "unary_unary",
        "Tail": "unary_stream",
        "ListAgents": "unary_unary",
        "Cancel": "unary_unary",
        "Resume": "unary_unary",
        "UpdateConfig": "unary_unary",
        "Signal": "unary_unary",
        "PruneRuns": "unary_unary",
    }


HEAVY = ["workflowd.store", "workflowd.server", "workflowd.coordinator", "sqlite3"]


@pytest.mark.parametrize(
    "modules",
    [
        ["workflowd.tasks", "workflowd.rpc.workflow_pb2", "workflowd.events"],
        ["workflowd.execution", "workflowd.rpc.workflow_pb2_grpc"],
        ["workflow_agent.agent"],
        ["workflowd.ctl"],
    ],
    ids=["sdk and protocol", "execution", "agent", "workflowctl"],
)
def test_light_imports_do_not_load_the_coordinator(modules):
    """Importing the SDK, protocol, agent or CLI loads no store, server, coordinator or sqlite3."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )

    assert json.loads(result.stdout) == []


def test_the_import_check_sees_heavy_modules():
    """The same check reports the store when a module that needs it is imported."""
    code = (
        "import json, sys, workflowd.store.sqlite\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )

    assert json.loads(result.stdout) == ["workflowd.store", "sqlite3"]
