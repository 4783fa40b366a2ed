"""TF Serving's request/response messages for the router, without TensorFlow.

Loads the descriptors that ``build_wire_protos`` copied from the tensorflow and
tensorflow-serving-api wheels (``wire_descriptors``) into a private descriptor pool, so these
classes never clash with the real ``tensorflow_serving.apis`` ones when both are imported (tests,
the all-in-one install). Same schema, same wire format: bytes from one parse with the other.

Next to the real messages this module declares *routing views*: messages with the field numbers
of the real requests/responses but only the fields the router reads. Parsing a 100-candidate
request as a view costs one C++ pass that keeps the candidates as unparsed bytes (the Examples
of ``ExampleListWithContext.examples`` are declared ``bytes``, which is the same wire type as an
embedded message), so the router never builds 100 Example objects it does not need.

The model server reads Regress requests through the same kind of view: ``SerializedInput`` mirrors
TF Serving's ``tensorflow_serving/apis/internal/serialized_input.proto`` (the ``Input`` oneof with
each Example kept as bytes), which TF Serving's util.cc InputToSerializedExampleTensor uses to
build the model's string tensor without parsing and re-serializing every Example.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

from crocodile.serving.wire_descriptors import FILE_DESCRIPTOR_SET_HEX

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_VIEW_FILE, _VIEW_PACKAGE = "crocodile/router_views.proto", "crocodile.router"

# (message, [(field name, number, type, label, type name[, oneof name])]): field numbers as in
# tensorflow_serving/apis/{predict,regression,input}.proto and tensorflow/core/framework/tensor.proto.
_VIEWS = (
    ("ExampleListView", [("examples", 1, _F.TYPE_BYTES, _REPEATED, None)]),
    ("ExampleListWithContextView", [("examples", 1, _F.TYPE_BYTES, _REPEATED, None),
                                    ("context", 2, _F.TYPE_MESSAGE, _OPTIONAL, ".tensorflow.Example")]),
    ("InputView", [("example_list", 1, _F.TYPE_MESSAGE, _OPTIONAL, f".{_VIEW_PACKAGE}.ExampleListView"),
                   ("example_list_with_context", 2, _F.TYPE_MESSAGE, _OPTIONAL,
                    f".{_VIEW_PACKAGE}.ExampleListWithContextView")]),
    ("RegressionRequestView", [("model_spec", 1, _F.TYPE_MESSAGE, _OPTIONAL, ".tensorflow.serving.ModelSpec"),
                               ("input", 2, _F.TYPE_MESSAGE, _OPTIONAL, f".{_VIEW_PACKAGE}.InputView")]),
    ("StringTensorView", [("string_val", 8, _F.TYPE_BYTES, _REPEATED, None)]),
    ("InputsEntryView", [("key", 1, _F.TYPE_STRING, _OPTIONAL, None),
                         ("value", 2, _F.TYPE_MESSAGE, _OPTIONAL, f".{_VIEW_PACKAGE}.StringTensorView")]),
    ("PredictRequestView", [("model_spec", 1, _F.TYPE_MESSAGE, _OPTIONAL, ".tensorflow.serving.ModelSpec"),
                            ("inputs", 2, _F.TYPE_MESSAGE, _REPEATED, f".{_VIEW_PACKAGE}.InputsEntryView")]),
    ("ModelSpecView", [("model_spec", 1, _F.TYPE_MESSAGE, _OPTIONAL, ".tensorflow.serving.ModelSpec")]),
    # PredictResponse and RegressionResponse both carry model_spec as field 2.
    ("ResponseView", [("model_spec", 2, _F.TYPE_MESSAGE, _OPTIONAL, ".tensorflow.serving.ModelSpec")]),
    # TF Serving's internal/serialized_input.proto, with one difference (I): ``context`` is repeated
    # here. TF Serving parses the whole Input first, so a context sent in several pieces (protobuf
    # merges repeated occurrences of a message field) reaches it merged; joining the pieces' bytes
    # is that same merge, where a single bytes field would keep only the last piece.
    ("SerializedExampleList", [("examples", 1, _F.TYPE_BYTES, _REPEATED, None)]),
    ("SerializedExampleListWithContext", [("examples", 1, _F.TYPE_BYTES, _REPEATED, None),
                                          ("context", 2, _F.TYPE_BYTES, _REPEATED, None)]),
    ("SerializedInput", [("example_list", 1, _F.TYPE_MESSAGE, _OPTIONAL,
                          f".{_VIEW_PACKAGE}.SerializedExampleList", "kind"),
                         ("example_list_with_context", 2, _F.TYPE_MESSAGE, _OPTIONAL,
                          f".{_VIEW_PACKAGE}.SerializedExampleListWithContext", "kind")]),
    ("SerializedRegressionRequest", [("model_spec", 1, _F.TYPE_MESSAGE, _OPTIONAL, ".tensorflow.serving.ModelSpec"),
                                     ("input", 2, _F.TYPE_MESSAGE, _OPTIONAL, f".{_VIEW_PACKAGE}.SerializedInput")]),
)


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    files = descriptor_pb2.FileDescriptorSet.FromString(bytes.fromhex("".join(FILE_DESCRIPTOR_SET_HEX)))
    for file_proto in files.file:
        pool.Add(file_proto)
    views = descriptor_pb2.FileDescriptorProto(
        name=_VIEW_FILE, package=_VIEW_PACKAGE, syntax="proto3",
        dependency=["tensorflow_serving/apis/model.proto", "tensorflow/core/example/example.proto"])
    for name, fields in _VIEWS:
        message = views.message_type.add(name=name)
        for field_name, number, field_type, label, type_name, *oneof in fields:
            field = message.field.add(name=field_name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = type_name
            if oneof:
                names = [decl.name for decl in message.oneof_decl]
                if oneof[0] not in names:
                    message.oneof_decl.add(name=oneof[0])
                    names.append(oneof[0])
                field.oneof_index = names.index(oneof[0])
    pool.Add(views)
    return pool


POOL = _build_pool()
_factory = message_factory.MessageFactory(POOL)


def message_class(full_name: str):
    return _factory.GetPrototype(POOL.FindMessageTypeByName(full_name))


ModelSpec = message_class("tensorflow.serving.ModelSpec")
Example = message_class("tensorflow.Example")
PredictRequest = message_class("tensorflow.serving.PredictRequest")
PredictResponse = message_class("tensorflow.serving.PredictResponse")
RegressionRequest = message_class("tensorflow.serving.RegressionRequest")
RegressionResponse = message_class("tensorflow.serving.RegressionResponse")
RegressionRequestView = message_class(f"{_VIEW_PACKAGE}.RegressionRequestView")
PredictRequestView = message_class(f"{_VIEW_PACKAGE}.PredictRequestView")
ResponseView = message_class(f"{_VIEW_PACKAGE}.ResponseView")
# GetModelMetadataRequest (and every request here) has its model_spec as field 1.
ModelSpecView = message_class(f"{_VIEW_PACKAGE}.ModelSpecView")
SerializedInput = message_class(f"{_VIEW_PACKAGE}.SerializedInput")
SerializedRegressionRequest = message_class(f"{_VIEW_PACKAGE}.SerializedRegressionRequest")


def length_delimited_field(number: int, payload: bytes) -> bytes:
    """Wire encoding of one length-delimited field (tag, varint length, payload)."""
    header = bytearray([(number << 3) | 2])
    size = len(payload)
    while size >= 0x80:
        header.append((size & 0x7F) | 0x80)
        size >>= 7
    header.append(size)
    return bytes(header) + payload
