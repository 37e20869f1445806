"""Import an optional framework on first use, or say which extra installs it."""

import importlib

# module -> the clstm-learn extra that installs it
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "keras": "keras", "torch": "torch"}


def import_optional(name, purpose):
    """The module `name`, or an ImportError naming the extra that provides it.

    `purpose` says what needed it (``"clstm.export_onnx"``), for the message.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        extra = EXTRAS[name]
        raise ImportError(
            f"{purpose} needs the optional package {name!r}, which is not installed: "
            f"pip install 'clstm-learn[{extra}]'") from exc
