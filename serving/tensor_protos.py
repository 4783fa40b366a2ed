"""TensorProto <-> numpy for the Predict API, filled the way TF Serving fills responses.

TF Serving answers Predict with typed value fields (``float_val``, ``int64_val``, ...), its
default ``AsProtoField`` serialization; ``tf.make_ndarray`` reads both that and
``tensor_content``, which is what clients use.
"""
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from crocodile.serving import status

_FIELD_BY_DTYPE = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    array = np.asarray(array)
    dtype = types_pb2.DT_STRING if array.dtype.kind in ("S", "O", "U") else \
        tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]))
    field = _FIELD_BY_DTYPE.get(dtype)
    if field is None:
        return tf.make_tensor_proto(array)
    values = array.ravel().tolist()
    if dtype == types_pb2.DT_STRING:
        values = [v.encode() if isinstance(v, str) else v for v in values]
    getattr(proto, field).extend(values)
    return proto


def to_ndarray(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # malformed TensorProto: wrong content size, bad dtype
        raise status.invalid_argument(f"input tensor '{alias}' is not a valid TensorProto: {error}") from None
