"""gRPC status errors with TF Serving's codes and messages.

TF Serving turns a ``tensorflow::Status`` into a gRPC status with the same code number
(TF's error codes are gRPC's) and message. ``ServingError`` carries that pair through the
embedded server; ``from_tf_error`` maps an exception raised inside a SavedModel graph
(``tf.errors.OpError``) the same way.
"""
import grpc

_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """An error answered to the client as a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


# Lines TF adds around the status message of an error raised in a tf.function.
_TF_CONTEXT_PREFIXES = ("Graph execution error", "Detected at node", "<stack traces unavailable>",
                        "[[", "File \"")


def first_paragraph(message: str) -> str:
    """The status message without TF's graph context; it names the feature or assertion."""
    kept = [line.strip() for line in message.splitlines()
            if line.strip() and not line.strip().startswith(_TF_CONTEXT_PREFIXES)]
    return "\n".join(kept) or message


def from_tf_error(error) -> ServingError:
    """Maps a ``tf.errors.OpError`` to the gRPC status TF Serving would answer."""
    code = _CODE_BY_VALUE.get(getattr(error, "error_code", 2), grpc.StatusCode.UNKNOWN)
    return ServingError(code, first_paragraph(getattr(error, "message", str(error))))
