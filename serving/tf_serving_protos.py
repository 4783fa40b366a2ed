"""TF Serving config protos that the ``tensorflow-serving-api`` wheel does not ship.

The wheel carries ``apis/`` and ``config/model_server_config.proto`` but neither
``BatchingParameters`` (servables/tensorflow/session_bundle_config.proto) nor
``MonitoringConfig`` (config/monitoring_config.proto). Both are rebuilt here from
their field numbers and types in tensorflow/serving 2.16, under their real package
``tensorflow.serving``, so the same text files that ``tensorflow_model_server``
reads (``--batching_parameters_file``, ``--monitoring_config_file``) parse here
with the same rules: an unknown field is an error.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2  # noqa: F401  (registers google/protobuf/wrappers.proto)

_FILE_NAME = "crocodile/tensorflow_serving_extra_configs.proto"
_PACKAGE = "tensorflow.serving"
_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, label, type_name) as in the .proto files at tensorflow/serving 2.16.
_BATCHING_FIELDS = (
    ("max_batch_size", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ("num_batch_threads", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ("thread_pool_name", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
    ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
    ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.BoolValue"),
    ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
)
_PROMETHEUS_FIELDS = (
    ("enable", 1, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
    ("path", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
)
_MONITORING_FIELDS = (
    ("prometheus_config", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".tensorflow.serving.PrometheusConfig"),
)


def _add_message(file_proto, name, fields):
    message = file_proto.message_type.add(name=name)
    for field_name, number, field_type, label, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=field_type, label=label)
        if type_name:
            field.type_name = type_name


def _build():
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE_NAME)
    except KeyError:
        file_proto = descriptor_pb2.FileDescriptorProto(
            name=_FILE_NAME, package=_PACKAGE, syntax="proto3",
            dependency=["google/protobuf/wrappers.proto"])
        _add_message(file_proto, "BatchingParameters", _BATCHING_FIELDS)
        _add_message(file_proto, "PrometheusConfig", _PROMETHEUS_FIELDS)
        _add_message(file_proto, "MonitoringConfig", _MONITORING_FIELDS)
        pool.Add(file_proto)
    factory = message_factory.MessageFactory(pool)
    return tuple(factory.GetPrototype(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
                 for name in ("BatchingParameters", "MonitoringConfig"))


BatchingParameters, MonitoringConfig = _build()


def parse_text_file(path: str, message_class):
    """Parses a text-format proto file; raises ValueError naming the file and the problem."""
    with open(path) as f:
        text = f.read()
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a valid {message_class.DESCRIPTOR.full_name}: {error}") from None


def read_batching_parameters(path: str):
    return parse_text_file(path, BatchingParameters)


def read_monitoring_config(path: str):
    return parse_text_file(path, MonitoringConfig)
